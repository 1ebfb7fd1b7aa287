"""Reading rendered pages in tests: elements by tag and attributes, parsed as Django's test tools do."""

from django.test.html import parse_html


def elements(html: str, tag: str, **attributes) -> list:
    """Every element called ``tag`` whose attributes include ``attributes``."""
    found = []

    def walk(node):
        if isinstance(node, str):
            return
        if node.name == tag and all(dict(node.attributes).get(k) == v for k, v in attributes.items()):
            found.append(node)
        for child in node.children:
            walk(child)

    walk(parse_html(html))
    return found


def attrs(element) -> dict:
    return dict(element.attributes)
