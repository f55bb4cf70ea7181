"""benches/RESULTS.md: a run's section appended, with the problems the run saw."""

FAILED = "\n**Run failed** (errors seen, numbers not trustworthy):\n\n"


def append_section(results, header, section, problems=()):
    """Appends `section` to `results` (a new file starts with `header`), the run's
    problems under it if there were any; returns the report's exit status: 1 when the
    run saw problems, else 0."""
    if problems:
        section += FAILED + "\n".join("- " + p for p in problems) + "\n"
    try:
        existing = open(results).read().rstrip("\n") + "\n"
    except FileNotFoundError:
        existing = header
    with open(results, "w") as f:
        f.write(existing + section)
    return 1 if problems else 0


def print_problems(problems):
    """The run's problems on stdout, under the report's table."""
    if problems:
        print("PROBLEMS (run marked failed):")
        for p in problems:
            print("  - " + p)
