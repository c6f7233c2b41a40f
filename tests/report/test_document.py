from cratelab.report.document import Bullets, Heading, Image, Link, Paragraph, Table, md_escape, to_html, to_markdown

EVIL = "<script>alert('x')</script> | *bold* [link](http://x)"


def test_markdown_escapes_html_tables_and_emphasis():
    md = to_markdown([Table(["run", "value"], [[EVIL, "1"]])])
    assert "<script>" not in md
    assert "\\<script\\>" in md
    row = md.strip().splitlines()[-1]
    assert row.count(" | ") == 1  # the pipe inside the name is escaped, so the row keeps two cells
    assert md_escape("a_b*c") == "a\\_b\\*c"


def test_html_escapes_every_text_and_has_no_external_resource():
    blocks = [Heading(1, EVIL), Paragraph(["see ", Link(EVIL, "runs/<x>/cards/index.html")]), Bullets([EVIL]),
              Table([EVIL], [[EVIL]], caption=EVIL), Image("plots/a b.png", EVIL)]
    page = to_html(EVIL, blocks)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert 'href="runs/%3Cx%3E/cards/index.html"' in page
    assert 'src="plots/a%20b.png"' in page
    assert "http" not in page.replace("http://x", "")  # only the escaped user text mentions a URL


def test_both_renderings_carry_the_same_text():
    blocks = [Heading(2, "Answers"), Paragraph("zero fraction increases"), Bullets(["a", "b"])]
    md, page = to_markdown(blocks), to_html("t", blocks)
    for text in ("Answers", "zero fraction increases", "a", "b"):
        assert text in md and text in page
