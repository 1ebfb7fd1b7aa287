"""``{% load markdown_extras %}`` … ``{{ listing.description|markdown }}``: sanitised Markdown."""

from django import template

from listings.markdown import render_markdown

register = template.Library()


@register.filter(name="markdown")
def markdown_filter(text):
    return render_markdown(text)
