// One PyTorch/JAX switch for the whole book.
//
// d2lbook renders each code block as MDL tabs whose links name the framework
// and point at the block's panel: <a href="#jax-3-1"> shows the panel with
// id="jax-3-1". Choosing a framework on any block shows it on every block of
// the page, and on the Colab buttons next to the title; the choice is kept in
// localStorage, so the next page opens in the same framework.
//
// config.ini ([html] include_js) has d2lbook append this file to d2l.js, which
// every page loads. The leading semicolon ends whatever d2l.js left
// unterminated before it (its `var tagClick = function ...` has none), so that
// this function is not taken as an argument of a call.
;(function () {
  'use strict';
  var STORAGE_KEY = 'd2l-vit.framework';
  var TAB_HREF = /^#([A-Za-z0-9_]+)-\d+-\d+$/;

  function frameworkOf(tab) {
    var match = TAB_HREF.exec(tab.getAttribute('href') || '');
    return match ? match[1] : null;
  }

  function tabsOf(group) {
    return Array.prototype.slice.call(
      group.querySelectorAll(':scope > .mdl-tabs__tab-bar > .mdl-tabs__tab'));
  }

  function show(framework) {
    var position = -1;
    document.querySelectorAll('.mdl-tabs').forEach(function (group) {
      var tabs = tabsOf(group);
      var chosen = tabs.findIndex(function (tab) { return frameworkOf(tab) === framework; });
      if (chosen < 0) return;  // a block without this framework keeps what it shows
      if (position < 0) position = chosen;
      tabs.forEach(function (tab, i) {
        tab.classList.toggle('is-active', i === chosen);
        var panel = document.getElementById(tab.getAttribute('href').slice(1));
        if (panel) panel.classList.toggle('is-active', i === chosen);
      });
    });
    // The Colab buttons (.d2l-tabs) carry no framework name, only the order
    // of the tabs, which is the same as on the code blocks.
    if (position < 0) return;
    document.querySelectorAll('.d2l-tabs').forEach(function (group) {
      group.querySelectorAll(':scope > .d2l-tabs__tab').forEach(function (button, i) {
        button.style.display = i === position ? '' : 'none';
      });
    });
  }

  // localStorage can be missing or refuse access (privacy settings, some
  // browsers on file:// pages): the switch then works for the page alone.
  function remember(framework) {
    try { window.localStorage.setItem(STORAGE_KEY, framework); } catch (e) { /* page only */ }
  }

  function recall() {
    try { return window.localStorage.getItem(STORAGE_KEY); } catch (e) { return null; }
  }

  // Listening on the document catches a click on any block's tab after MDL and
  // d2l.js have handled it (they switch by position; this switches by name).
  document.addEventListener('click', function (event) {
    var tab = event.target.closest && event.target.closest('.mdl-tabs__tab');
    var framework = tab && frameworkOf(tab);
    if (!framework) return;
    show(framework);
    remember(framework);
  });

  // Registered after d2l.js's own ready handler, which shows the first tab on
  // every block, so the remembered choice wins.
  $(function () {
    var framework = recall();
    if (framework) show(framework);
  });
})();
