"""The results-file helper used by bench/ and models/: one section replaced, others kept."""

from manidefense._markdown import update_section


def test_update_section_replaces_only_its_own_section(tmp_path):
    path = tmp_path / "RESULTS.md"
    update_section(path, "a", "## a\n\nold a\n", "# Title\n")
    update_section(path, "b", "## b\n\nb\n", "# Title\n")
    update_section(path, "a", "## a\n\nnew a\n", "# Title\n")
    assert path.read_text() == "# Title\n\n## a\n\nnew a\n\n## b\n\nb\n"
    # A section whose name is a prefix of another is not confused with it.
    update_section(path, "b", "## b\n\nb2\n", "ignored")
    update_section(path, "a.b", "## a.b\n\nc\n", "ignored")
    assert path.read_text() == "# Title\n\n## a\n\nnew a\n\n## b\n\nb2\n\n## a.b\n\nc\n"
