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


def text(node) -> str:
    """The text inside ``node`` (an element or a string), whitespace collapsed."""
    if isinstance(node, str):
        return " ".join(node.split())
    return " ".join(part for part in (text(child) for child in node.children) if part)


def catalog_titles(html: str) -> list[str]:
    """The titles of the catalog's result cards, in order."""
    return [text(elements(str(card), "a")[0]) for card in elements(html, "article", **{"class": "card listing-card"})]


def catalog_facet_counts(html: str, title: str) -> dict[str, int]:
    """The catalog's facet headed ``title``: each value's label and count (a capped count's "+" dropped)."""
    for section in elements(html, "section", **{"class": "facet"}):
        if text(elements(str(section), "h3")[0]) == title:
            counts = {}
            for item in elements(str(section), "li"):
                (count,) = elements(str(item), "span", **{"class": "count"})
                counts[text(elements(str(item), "a")[0])] = int(text(count).rstrip("+"))
            return counts
    return {}
