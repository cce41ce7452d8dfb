#!/usr/bin/env bash
# Re-creates the vendored parts of book/offline/ (committed) from the npm registry at pinned versions,
# so the built book renders math and widgets with no network: MathJax, require.js, the widget embedder
# and its icon fonts (woff2: every browser MathJax 3 runs in reads it). The book's own files there
# (book.css, widgets/setup.js, colab-badge.svg) are left alone. Run it only to change a version; the
# build uses the committed copies. The folder is deliberately not named _static: Jupyter Book would
# inject every script found there into every page.
set -euo pipefail
MATHJAX=3.2.2
REQUIREJS=2.3.7
HTML_MANAGER=1.0.15
root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/book/offline"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
for spec in "mathjax@$MATHJAX" "requirejs@$REQUIREJS" "@jupyter-widgets/html-manager@$HTML_MANAGER"; do
  npm pack --silent "$spec" >/dev/null
done
rm -rf "$dest/mathjax" "$dest/widgets/require.js" "$dest/widgets/embed-amd.js" "$dest"/widgets/*.woff2
mkdir -p "$dest/mathjax/output/chtml/fonts" "$dest/widgets"
tar xzf mathjax-$MATHJAX.tgz
cp package/es5/tex-chtml.js "$dest/mathjax/"
cp -r package/es5/output/chtml/fonts/woff-v2 "$dest/mathjax/output/chtml/fonts/"
# tex-chtml.js loads its TeX extensions on demand from ./input/tex/extensions
mkdir -p "$dest/mathjax/input/tex"; cp -r package/es5/input/tex/extensions "$dest/mathjax/input/tex/"
rm -rf package
tar xzf requirejs-$REQUIREJS.tgz && cp package/require.js "$dest/widgets/require.js" && rm -rf package
tar xzf jupyter-widgets-html-manager-$HTML_MANAGER.tgz
cp package/dist/embed-amd.js "$dest/widgets/embed-amd.js"
# the embedder's Font Awesome fonts, found through widgets/setup.js
cp package/dist/*.woff2 "$dest/widgets/"
rm -rf package
cat > "$dest/VERSIONS" <<V
mathjax $MATHJAX
requirejs $REQUIREJS
@jupyter-widgets/html-manager $HTML_MANAGER
V
du -sh "$dest"
