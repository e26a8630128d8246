"""The layout canvas: one box per subject, drawn, moved and resized with the mouse.

A ``gr.HTML`` component (Gradio's own way to write a small custom component) whose value is the
plain dict of :func:`canvas_value`::

    {"width": 1024, "height": 1024, "active": 0,
     "subjects": [{"label": "dog", "box": [x0, y0, x1, y1] | None}, ...]}   # one per subject slot

Boxes are normalised ``(x0, y0, x1, y1)`` of the output image, as everywhere in the package. The
template renders the value (boxes as percentages of a frame with the output's aspect ratio); the
script only handles the pointer: dragging on empty canvas draws the active subject's box (the next
subject without a box becomes active), dragging a box moves it, dragging a corner resizes it. At the
end of a gesture the script stores the new value and fires the component's ``input`` event, which
the app turns into the numeric box fields — those fields are the boxes a request is built from.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..visualize import PALETTE

# One colour per subject slot — the result overlays' colours (``visualize.PALETTE``), so a box on
# the canvas and the same subject's box on the overlay match.
COLORS = tuple("#{:02x}{:02x}{:02x}".format(*rgb) for rgb in PALETTE[:4])

# `${...}` is evaluated as a JS template literal by gr.HTML (after Handlebars, which sees no `{{`).
# Labels are escaped; every other interpolated value is a number.
_COLOR = "[" + ", ".join(f"'{c}'" for c in COLORS) + "][i]"
_LABEL = (
    "String(s.label || 'subject ' + (i + 1)).replace(/&/g, '&amp;').replace(/</g, '&lt;')"
    ".replace(/>/g, '&gt;')"
)

HTML_TEMPLATE = f"""
<div class="msd-layout" data-active="${{value.active}}">
  <div class="msd-chips">
    ${{value.subjects.map((s, i) => `<button type="button"
        class="msd-chip${{i === value.active ? ' on' : ''}}${{s.box ? '' : ' nobox'}}"
        data-k="${{i}}" style="--c: ${{{_COLOR}}}"
        title="draw the box of subject ${{i + 1}}${{s.box ? '' : ' (none yet)'}}"
        >${{i + 1}}. ${{{_LABEL}}}</button>`).join('')}}
    <button type="button" class="msd-clear"
        title="remove the highlighted subject's box">clear box</button>
  </div>
  <div class="msd-frame" style="width: min(100%, calc(62vh * ${{value.width}} / ${{value.height}}));
       aspect-ratio: ${{value.width}} / ${{value.height}};" tabindex="0">
    ${{value.subjects.map((s, i) => s.box ? `<div
        class="msd-box${{i === value.active ? ' on' : ''}}" data-k="${{i}}"
        style="left: ${{s.box[0] * 100}}%; top: ${{s.box[1] * 100}}%;
               width: ${{(s.box[2] - s.box[0]) * 100}}%; height: ${{(s.box[3] - s.box[1]) * 100}}%;
               --c: ${{{_COLOR}}};">
        <span class="msd-label">${{i + 1}}. ${{{_LABEL}}}</span>
        <i class="msd-handle" data-corner="nw"></i><i class="msd-handle" data-corner="ne"></i>
        <i class="msd-handle" data-corner="sw"></i><i class="msd-handle" data-corner="se"></i>
      </div>` : '').join('')}}
  </div>
  <div class="msd-caption">${{value.width}} × ${{value.height}} px · drag on the canvas to draw the
    highlighted subject's box; drag a box to move it, a corner to resize it</div>
</div>
"""

CSS_TEMPLATE = """
.msd-chips { display: flex; flex-wrap: wrap; gap: 6px; margin-bottom: 8px; }
.msd-chip, .msd-clear { border: 2px solid var(--c, #888); border-radius: 14px; padding: 2px 10px;
  background: transparent; color: var(--body-text-color); cursor: pointer; font-size: 13px; }
.msd-chip.on { background: var(--c); color: white; }
.msd-chip.nobox { border-style: dashed; }
.msd-frame { position: relative; margin: 0 auto; touch-action: none; user-select: none;
  cursor: crosshair; outline: 1px solid var(--border-color-primary);
  background-color: var(--background-fill-secondary);
  background-image: linear-gradient(var(--border-color-primary) 1px, transparent 1px),
                    linear-gradient(90deg, var(--border-color-primary) 1px, transparent 1px);
  background-size: 12.5% 12.5%; }
.msd-box { position: absolute; box-sizing: border-box; border: 2px solid var(--c);
  background: color-mix(in srgb, var(--c) 18%, transparent); cursor: move; }
.msd-box.on { border-width: 3px; background: color-mix(in srgb, var(--c) 28%, transparent); }
.msd-label { position: absolute; left: 0; top: 0; padding: 0 4px; background: var(--c);
  color: white; font-size: 12px; white-space: nowrap; pointer-events: none; }
.msd-handle { position: absolute; width: 10px; height: 10px; background: var(--c);
  border: 1px solid white; }
.msd-handle[data-corner="nw"] { left: -6px; top: -6px; cursor: nwse-resize; }
.msd-handle[data-corner="ne"] { right: -6px; top: -6px; cursor: nesw-resize; }
.msd-handle[data-corner="sw"] { left: -6px; bottom: -6px; cursor: nesw-resize; }
.msd-handle[data-corner="se"] { right: -6px; bottom: -6px; cursor: nwse-resize; }
.msd-caption { font-size: 12px; opacity: 0.75; margin-top: 6px; text-align: center; }
"""

# Runs once when the component mounts. `element` persists across re-renders of the template, so
# listeners are delegated to it; the template is re-rendered from `props.value` on every change.
JS_ON_LOAD = """
const MIN_PX = 3;
let drag = null;  // {mode: 'draw'|'move'|'resize', k, start: [x, y], box0, corner, rect}
const clamp = (v) => Math.min(1, Math.max(0, v));
const copy = () => JSON.parse(JSON.stringify(props.value));
const point = (ev, rect) => [clamp((ev.clientX - rect.left) / rect.width),
                             clamp((ev.clientY - rect.top) / rect.height)];
const commit = (value) => { props.value = value; trigger('input'); };
function boxFrom(d, p) {
  if (d.mode === 'draw') {
    return [Math.min(d.start[0], p[0]), Math.min(d.start[1], p[1]),
            Math.max(d.start[0], p[0]), Math.max(d.start[1], p[1])];
  }
  const dx = p[0] - d.start[0], dy = p[1] - d.start[1];
  let [x0, y0, x1, y1] = d.box0;
  if (d.mode === 'move') {
    const mx = Math.min(Math.max(dx, -x0), 1 - x1), my = Math.min(Math.max(dy, -y0), 1 - y1);
    return [x0 + mx, y0 + my, x1 + mx, y1 + my];
  }
  if (d.corner.includes('w')) x0 = clamp(x0 + dx); else x1 = clamp(x1 + dx);
  if (d.corner.includes('n')) y0 = clamp(y0 + dy); else y1 = clamp(y1 + dy);
  return [Math.min(x0, x1), Math.min(y0, y1), Math.max(x0, x1), Math.max(y0, y1)];
}
function preview(d, box) {
  const frame = element.querySelector('.msd-frame');
  let el = frame.querySelector(`.msd-box[data-k="${d.k}"]`);
  if (!el) {
    el = document.createElement('div');
    el.className = 'msd-box on';
    el.dataset.k = d.k;
    const chip = element.querySelectorAll('.msd-chip')[d.k];
    el.style.setProperty('--c', getComputedStyle(chip).borderColor);
    frame.appendChild(el);
  }
  el.style.left = `${box[0] * 100}%`; el.style.top = `${box[1] * 100}%`;
  el.style.width = `${(box[2] - box[0]) * 100}%`; el.style.height = `${(box[3] - box[1]) * 100}%`;
}
element.addEventListener('pointerdown', (ev) => {
  const chip = ev.target.closest('.msd-chip');
  if (chip) { const v = copy(); v.active = Number(chip.dataset.k); props.value = v; return; }
  if (ev.target.closest('.msd-clear')) {
    const v = copy(); v.subjects[v.active].box = null; commit(v); return;
  }
  const frame = ev.target.closest('.msd-frame');
  if (!frame || ev.button !== 0) return;
  ev.preventDefault();
  frame.focus();  // for Delete / Backspace
  const rect = frame.getBoundingClientRect();
  const handle = ev.target.closest('.msd-handle'), boxEl = ev.target.closest('.msd-box');
  const p = point(ev, rect);
  if (boxEl) {
    const k = Number(boxEl.dataset.k);
    drag = {mode: handle ? 'resize' : 'move', k, start: p, box0: props.value.subjects[k].box,
            corner: handle ? handle.dataset.corner : '', rect, px: [ev.clientX, ev.clientY]};
  } else {
    drag = {mode: 'draw', k: props.value.active, start: p, rect, px: [ev.clientX, ev.clientY]};
  }
  frame.setPointerCapture(ev.pointerId);
});
element.addEventListener('pointermove', (ev) => {
  if (!drag) return;
  drag.box = boxFrom(drag, point(ev, drag.rect));
  preview(drag, drag.box);
});
const finish = (ev) => {
  if (!drag) return;
  const d = drag; drag = null;
  const moved = Math.hypot(ev.clientX - d.px[0], ev.clientY - d.px[1]) >= MIN_PX;
  const v = copy();
  if (!moved || !d.box) {  // a click: select the box under the pointer
    if (d.mode !== 'draw') { v.active = d.k; props.value = v; }
    else props.value = v;
    return;
  }
  const box = boxFrom(d, point(ev, d.rect));
  if (box[2] - box[0] <= 0 || box[3] - box[1] <= 0) { props.value = v; return; }
  v.subjects[d.k].box = box;
  v.active = d.k;
  if (d.mode === 'draw') {  // the next subject without a box is drawn next
    const n = v.subjects.length;
    for (let j = 1; j < n; j++) {
      const c = (d.k + j) % n;
      if (!v.subjects[c].box) { v.active = c; break; }
    }
  }
  commit(v);
};
element.addEventListener('pointerup', finish);
element.addEventListener('pointercancel', (ev) => { drag = null; props.value = copy(); });
element.addEventListener('keydown', (ev) => {
  if ((ev.key === 'Delete' || ev.key === 'Backspace') && ev.target.closest('.msd-frame')) {
    const v = copy(); v.subjects[v.active].box = null; commit(v); ev.preventDefault();
  }
});
"""

# Client-side event functions (no server round trip, so the fields are current when "Generate" is
# clicked right after a drag). Box text is "x0, y0, x1, y1" with 4 decimals (< 0.1 canvas pixel).
JS_CANVAS_TO_BOXES = """
(c) => c.subjects.map((s) => s.box ? s.box.map((v) => String(Number(v.toFixed(4)))).join(', ') : '')
"""


def js_box_to_canvas(k: int) -> str:
    """JS for ``(box_text, canvas) -> canvas``: a typed box moves subject ``k``'s box on the canvas.

    Text that is not a valid box leaves the canvas as it is (the request's validation reports it
    next to the field).
    """
    return f"""
(text, c) => {{
  const v = JSON.parse(JSON.stringify(c));
  const parts = String(text || '').split(/[\\s,]+/).filter((p) => p.length > 0).map(Number);
  if (parts.length === 0) {{ v.subjects[{k}].box = null; return v; }}
  const ok = parts.length === 4 && parts.every((p) => Number.isFinite(p) && p >= 0 && p <= 1)
             && parts[0] < parts[2] && parts[1] < parts[3];
  if (ok) v.subjects[{k}].box = parts;
  return v;
}}
"""


def js_label_to_canvas(k: int) -> str:
    """JS for ``(phrase, canvas) -> canvas``: subject ``k``'s box is labelled with its phrase."""
    return f"""
(phrase, c) => {{
  const v = JSON.parse(JSON.stringify(c));
  v.subjects[{k}].label = phrase || '';
  return v;
}}
"""


JS_SIZE_TO_CANVAS = """
(w, h, c) => {
  const v = JSON.parse(JSON.stringify(c));
  if (Number(w) > 0) v.width = Number(w);
  if (Number(h) > 0) v.height = Number(h);
  return v;
}
"""


def canvas_value(
    width: int,
    height: int,
    labels: Sequence[str],
    boxes: Sequence[Sequence[float] | None],
    active: int = 0,
) -> dict[str, Any]:
    """The canvas's value for an output of ``width`` × ``height`` and one box (or None) per slot."""
    if len(labels) != len(boxes):
        raise ValueError(f"{len(labels)} labels for {len(boxes)} boxes")
    subjects = [
        {"label": str(label or ""), "box": None if box is None else [float(v) for v in box]}
        for label, box in zip(labels, boxes, strict=True)
    ]
    return {"width": int(width), "height": int(height), "active": int(active), "subjects": subjects}


def layout_canvas(value: dict[str, Any], **kwargs: Any):
    """The canvas component (import-light callers: gradio is imported here, not at module level)."""
    import gradio as gr

    return gr.HTML(
        value=value,
        html_template=HTML_TEMPLATE,
        css_template=CSS_TEMPLATE,
        js_on_load=JS_ON_LOAD,
        **kwargs,
    )
