"""A Sphinx extension for the built book's pages (``sphinx.local_extensions`` in ``_config.yml``).

sphinx-thebe adds its configuration script (``const THEBE_JS_URL = ...``) each time the documents are
read, and Jupyter Book's build ends up with two copies (one named by the file None, one by "", so Sphinx
does not see them as one): every page then raised "Identifier 'THEBE_JS_URL' has already been declared" in the
browser console. Each page keeps the first copy of every script (same file, same attributes and body).
"""


def _unique_scripts(app, pagename, templatename, context, doctree):
    seen, unique = set(), []
    for script in context.get("script_files", []):
        key = (str(getattr(script, "filename", script) or ""), tuple(sorted(getattr(script, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    if "script_files" in context:
        context["script_files"] = unique


def setup(app):
    app.connect("html-page-context", _unique_scripts)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
