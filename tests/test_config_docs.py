from pathlib import Path

from cratelab.configdoc import SECTIONS, config_reference

DOCS = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def test_docs_config_md_is_written_from_the_field_metadata():
    assert DOCS.read_text(encoding="utf-8") == config_reference(), (
        "docs/config.md is stale: python -m cratelab.configdoc > docs/config.md")


def test_every_field_of_every_section_has_a_description():
    import dataclasses

    missing = [f"{title} {f.name}" for title, cls in SECTIONS for f in dataclasses.fields(cls)
               if not f.metadata.get("doc")]
    assert not missing
