"""Merchant Markdown is rendered, then sanitised: formatting stays, active content goes."""

import pytest
from django.template import Context, Template
from django.utils.safestring import SafeString

from listings.markdown import render_markdown


def test_returns_safe_html():
    html = render_markdown("**bold** and *italic*")
    assert isinstance(html, SafeString)
    assert html == "<p><strong>bold</strong> and <em>italic</em></p>"
    assert render_markdown("") == "" and render_markdown(None) == ""


@pytest.mark.parametrize(
    ("source", "forbidden"),
    [
        ("Hello <script>alert('x')</script> world", ["<script", "alert"]),
        ("<script src=https://evil.example/x.js></script>", ["<script", "evil.example"]),
        ('<a href="https://example.com" onclick="steal()">x</a>', ["onclick", "steal"]),
        ('<img src="https://example.com/a.png" onerror="steal()">', ["onerror", "steal"]),
        ("[click](javascript:alert(1))", ["javascript:", "alert"]),
        ('<a href="JaVaScRiPt:alert(1)">x</a>', ["javascript", "alert"]),
        ('<iframe src="https://evil.example/"></iframe>', ["<iframe", "evil.example"]),
        ("![pixel](data:image/png;base64,iVBORw0KGgo=)", ["data:", "base64"]),
        ('<div style="position:fixed">x</div>', ["style", "<div"]),
        ("<style>body{display:none}</style>", ["<style", "display"]),
        ('<form action="https://evil.example"><input name="p"></form>', ["<form", "<input", "evil"]),
        ("<!-- hidden --> text", ["<!--", "hidden"]),
        ('<svg onload="steal()"><circle/></svg>', ["<svg", "onload", "steal"]),
    ],
)
def test_active_content_is_removed(source, forbidden):
    html = render_markdown(source).lower()
    for fragment in forbidden:
        assert fragment.lower() not in html


def test_links_get_rel_nofollow_noopener():
    assert render_markdown("[docs](https://example.com/docs)") == (
        '<p><a href="https://example.com/docs" rel="nofollow noopener">docs</a></p>'
    )
    assert render_markdown('<a href="https://x.example" rel="opener">x</a>') == (
        '<p><a href="https://x.example" rel="nofollow noopener">x</a></p>'
    )


def test_tables_are_kept_with_alignment_without_inline_styles():
    html = render_markdown("| city | people |\n|:-----|-------:|\n| Guiyang | 6400000 |\n")
    assert "<table>" in html and "<thead>" in html and "<tbody>" in html
    assert '<th align="left">city</th>' in html
    assert '<td align="right">6400000</td>' in html
    assert "style" not in html


def test_fenced_code_is_kept_and_escaped():
    html = render_markdown("```sql\nSELECT * FROM t WHERE a < 1;\n```\n\nInline `x<y`.")
    assert "<pre><code>SELECT * FROM t WHERE a &lt; 1;\n</code></pre>" in html
    assert "<code>x&lt;y</code>" in html


def test_lists_headings_and_http_images_are_kept():
    html = render_markdown("## Fields\n\n1. one\n2. two\n\n- a\n- b\n\n![chart](https://example.com/c.png)")
    assert "<h2>Fields</h2>" in html
    assert "<ol>\n<li>one</li>\n<li>two</li>\n</ol>" in html
    assert "<ul>\n<li>a</li>\n<li>b</li>\n</ul>" in html
    assert '<img alt="chart" src="https://example.com/c.png">' in html


def test_template_filter():
    template = Template("{% load markdown_extras %}{{ text|markdown }}")
    html = template.render(Context({"text": "# Title\n\n<script>x()</script>ok"}))
    assert html == "<h1>Title</h1>\n\n<p>ok</p>"
