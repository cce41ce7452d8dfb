// Loaded before the widget embedder on every page with widgets (nb_ipywidgets_js in _config.yml).
// 1. The embedder's icon fonts are loaded from the folder of its AMD module's URL, which require.js
//    makes relative to the page ("<page folder>/@jupyter-widgets/html-manager/dist/"), where they are
//    not: map that module path to this folder, which holds them (scripts/fetch_offline_assets.sh copies
//    them from the same package as embed-amd.js); require.js reads a `require` object defined before it
//    loads as its configuration. (__jupyter_widgets_assets_path__ is the embedder's own setting for what
//    it loads later.)
// 2. The embedder typesets widget labels with MathJax 2's MathJax.Hub.Queue; the book loads MathJax 3,
//    which has no Hub: give MathJax (its config object before it loads, itself after) a Hub whose Queue
//    calls MathJax 3's typesetPromise once MathJax is ready. Non-enumerable, so MathJax 3 never reads it
//    as a configuration option.
(function () {
  var here = new URL(".", document.currentScript.src).href;
  if (window.require === undefined) {
    window.require = {paths: {"@jupyter-widgets/html-manager/dist": here.replace(/\/$/, "")}};
  }
  window.__jupyter_widgets_assets_path__ = here;
  var hub = {
    Queue: function () {
      var elements = [];
      for (var i = 0; i < arguments.length; i++) {
        var job = arguments[i];
        if (Array.isArray(job) && job[0] === "Typeset" && job[2]) elements.push(job[2]);
      }
      (function typeset() {
        if (window.MathJax && window.MathJax.typesetPromise) {
          window.MathJax.typesetPromise(elements.length ? elements : undefined);
        } else {
          setTimeout(typeset, 50);
        }
      })();
    }
  };
  function attach(mathjax) {
    if (mathjax && typeof mathjax === "object" && !("Hub" in mathjax)) {
      Object.defineProperty(mathjax, "Hub", {value: hub, enumerable: false, configurable: true});
    }
  }
  var current = window.MathJax;
  attach(current);
  // MathJax 3 replaces window.MathJax (its config object) with itself when it loads.
  Object.defineProperty(window, "MathJax", {
    configurable: true,
    get: function () { return current; },
    set: function (value) { current = value; attach(value); }
  });
})();
