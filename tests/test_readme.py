import cli_reference


def test_readme_command_reference_matches_the_cli():
    current = cli_reference.README.read_text()
    assert current == cli_reference.readme_with_reference(current), (
        "README.md's command reference is out of date: run python tests/cli_reference.py --write")
