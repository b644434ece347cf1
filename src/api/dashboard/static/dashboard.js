// CareRelay dashboard: progressive enhancement only — every page works without it.
// - <form data-confirm="…">: asks before an action is sent (replay, reprocess).
// - <input type="checkbox" data-select-all="NAME">: ticks or clears every checkbox named NAME.
'use strict';
document.addEventListener('submit', (event) => {
  const form = event.target;
  const question = form instanceof HTMLFormElement ? form.dataset.confirm : undefined;
  if (question && !window.confirm(question)) event.preventDefault();
});
document.addEventListener('change', (event) => {
  const box = event.target;
  if (!(box instanceof HTMLInputElement) || !box.dataset.selectAll) return;
  for (const other of document.querySelectorAll(`input[type=checkbox][name="${CSS.escape(box.dataset.selectAll)}"]`)) other.checked = box.checked;
});
