"""MkDocs hook: the command-line reference shows each command's examples as a code
block, as `transfer CMD -h` does, instead of one run-on paragraph."""

import re

# mkdocs-click renders a docstring's "Examples:" block (click's \b paragraph) as <p>.
EXAMPLES = re.compile(r"<p>(Examples?):\n((?:  [^\n]*(?:\n|(?=</p>)))+)</p>")


def on_page_content(html, page, **kwargs):
    if page.file.src_uri != "reference/cli.md":
        return html
    return EXAMPLES.sub(
        lambda m: (
            f"<p>{m.group(1)}:</p>\n<pre><code>"
            + "\n".join(line[2:] for line in m.group(2).splitlines())
            + "</code></pre>"
        ),
        html,
    )
