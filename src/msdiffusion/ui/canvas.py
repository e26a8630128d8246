"""The layout canvas: one box per subject, drawn, moved and resized with the mouse.

A ``gr.HTML`` component (Gradio's own way to write a small custom component) whose value is the
plain dict of :func:`canvas_value`::

    {"width": 1024, "height": 1024, "active": 0, "shown": 2,
     "subjects": [{"label": "dog", "box": [x0, y0, x1, y1] | None}, ...],   # one per subject slot
     "background": "/gradio_api/file=..." | None}   # the picture to start from, under the boxes

Boxes are normalised ``(x0, y0, x1, y1)`` of the output image, as everywhere in the package. The
template renders the value for the first ``shown`` slots (boxes as percentages of a frame with the
output's aspect ratio); the script only handles the pointer, and every gesture edits the highlighted
("active") subject: dragging anywhere draws its box — over another subject's box too (a click on
a box highlights that subject instead) —, dragging inside its box moves it, dragging one of its
corners resizes it. Boxes stay normalised while dragging (a corner pulled past the opposite edge
flips the box) and never get smaller than :data:`MIN_SIZE` of a side. After a drawn box the next
subject without one is highlighted. At the end of a gesture the script stores the new value and
fires the component's ``input`` event, which the app turns into the numeric box fields — those
fields are the boxes a request is built from.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..visualize import PALETTE

# One colour per subject slot — the result overlays' colours (``visualize.PALETTE``), so a box on
# the canvas and the same subject's box on the overlay match.
COLORS = tuple("#{:02x}{:02x}{:02x}".format(*rgb) for rgb in PALETTE)
MIN_SIZE = 0.02  # the smallest box side, as a fraction of the canvas side

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
    ${{value.subjects.map((s, i) => i >= value.shown ? '' : `<button type="button"
        class="msd-chip${{i === value.active ? ' on' : ''}}${{s.box ? '' : ' nobox'}}"
        data-k="${{i}}" style="--c: ${{{_COLOR}}}"
        title="draw the box of subject ${{i + 1}}${{s.box ? '' : ' (none yet)'}}"
        >${{i + 1}}. ${{{_LABEL}}}</button>`).join('')}}
    <button type="button" class="msd-clear"
        title="remove the highlighted subject's box">clear box</button>
  </div>
  <div class="msd-frame" style="width: min(100%, calc(52vh * ${{value.width}} / ${{value.height}}));
       aspect-ratio: ${{value.width}} / ${{value.height}};${{value.background ? ` background:
       url('${{encodeURI(value.background).replace(/'/g, '%27')}}') center / 100% 100% no-repeat;`
       : ''}}" tabindex="0">
    ${{value.subjects.map((s, i) => s.box && i < value.shown ? `<div
        class="msd-box${{i === value.active ? ' on' : ''}}" data-k="${{i}}"
        style="left: ${{s.box[0] * 100}}%; top: ${{s.box[1] * 100}}%;
               width: ${{(s.box[2] - s.box[0]) * 100}}%; height: ${{(s.box[3] - s.box[1]) * 100}}%;
               --c: ${{{_COLOR}}};">
        <span class="msd-label">${{i + 1}}. ${{{_LABEL}}}</span>
        <i class="msd-handle" data-corner="nw"></i><i class="msd-handle" data-corner="ne"></i>
        <i class="msd-handle" data-corner="sw"></i><i class="msd-handle" data-corner="se"></i>
      </div>` : '').join('')}}
  </div>
  <div class="msd-caption">${{value.width}} × ${{value.height}} px · drag to draw the highlighted
    subject's box; drag inside it to move it, a corner to resize it; click a box to pick it</div>
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
.msd-box.on { border-width: 3px; background: color-mix(in srgb, var(--c) 28%, transparent);
  z-index: 2; }  /* the highlighted box and its corners above the others */
.msd-label { position: absolute; left: 0; top: 0; padding: 0 4px; background: var(--c);
  color: white; font-size: 12px; white-space: nowrap; pointer-events: none; }
.msd-handle { position: absolute; width: 10px; height: 10px; background: var(--c);
  border: 1px solid white; }
.msd-box:not(.on) { cursor: pointer; }
.msd-box:not(.on) .msd-handle { display: none; }
.msd-handle[data-corner="nw"] { left: -6px; top: -6px; cursor: nwse-resize; }
.msd-handle[data-corner="ne"] { right: -6px; top: -6px; cursor: nesw-resize; }
.msd-handle[data-corner="sw"] { left: -6px; bottom: -6px; cursor: nesw-resize; }
.msd-handle[data-corner="se"] { right: -6px; bottom: -6px; cursor: nwse-resize; }
.msd-caption { font-size: 12px; opacity: 0.75; margin-top: 6px; text-align: center; }
"""

# Runs once when the component mounts. `element` persists across re-renders of the template, so
# listeners are delegated to it; the template is re-rendered from `props.value` on every change.
JS_ON_LOAD = (
    f"""
const MIN = {MIN_SIZE};
const MIN_PX = 3;
"""
    + """
let drag = null;  // {mode: 'draw'|'move'|'resize', k, hit, start: [x, y], box0, anchor, rect, px}
const clamp = (v) => Math.min(1, Math.max(0, v));
const copy = () => JSON.parse(JSON.stringify(props.value));
const point = (ev, rect) => [clamp((ev.clientX - rect.left) / rect.width),
                             clamp((ev.clientY - rect.top) / rect.height)];
const commit = (value) => { props.value = value; trigger('input'); };
// One side from the fixed edge `a` to the pointer `p`: ordered, at least MIN long, inside [0, 1].
function side(a, p) {
  let dir = p >= a ? 1 : -1;
  if (Math.abs(p - a) >= MIN) return dir > 0 ? [a, p] : [p, a];
  if (a + dir * MIN > 1 || a + dir * MIN < 0) dir = -dir;  // no room that way: the other way
  return dir > 0 ? [a, a + MIN] : [a - MIN, a];
}
function boxFrom(d, p) {
  if (d.mode === 'move') {
    const [x0, y0, x1, y1] = d.box0;
    const dx = p[0] - d.start[0], dy = p[1] - d.start[1];
    const mx = Math.min(Math.max(dx, -x0), 1 - x1), my = Math.min(Math.max(dy, -y0), 1 - y1);
    return [x0 + mx, y0 + my, x1 + mx, y1 + my];
  }
  // draw: from the press to the pointer; resize: from the opposite corner to the moved corner
  const q = d.mode === 'draw' ? p
    : [clamp(d.corner0[0] + p[0] - d.start[0]), clamp(d.corner0[1] + p[1] - d.start[1])];
  const [x0, x1] = side(d.anchor[0], q[0]), [y0, y1] = side(d.anchor[1], q[1]);
  return [x0, y0, x1, y1];
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
  const p = point(ev, rect), k = props.value.active, px = [ev.clientX, ev.clientY];
  const hit = boxEl ? Number(boxEl.dataset.k) : null;
  const box0 = props.value.subjects[k] ? props.value.subjects[k].box : null;
  if (hit === k && box0 && handle) {  // a corner of the highlighted box: resize from the other one
    const c = handle.dataset.corner;
    const corner0 = [c.includes('w') ? box0[0] : box0[2], c.includes('n') ? box0[1] : box0[3]];
    const anchor = [c.includes('w') ? box0[2] : box0[0], c.includes('n') ? box0[3] : box0[1]];
    drag = {mode: 'resize', k, hit, start: p, box0, corner0, anchor, rect, px};
  } else if (hit === k && box0) {
    drag = {mode: 'move', k, hit, start: p, box0, rect, px};
  } else {  // anywhere else, over another subject's box too: draw the highlighted subject's box
    drag = {mode: 'draw', k, hit, start: p, anchor: p, rect, px};
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
  if (!moved || !d.box) {  // a click: highlight the subject whose box is under the pointer
    if (d.hit !== null) v.active = d.hit;
    props.value = v;
    return;
  }
  v.subjects[d.k].box = boxFrom(d, point(ev, d.rect));
  v.active = d.k;
  if (d.mode === 'draw') {  // the next shown subject without a box is drawn next
    const n = Math.min(v.shown, v.subjects.length);
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
)

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
    shown: int | None = None,
    background: str | None = None,
) -> dict[str, Any]:
    """The canvas's value for an output of ``width`` × ``height`` and one box (or None) per slot;
    the first ``shown`` slots (default: all) are on the page; ``background``: the URL of a
    picture to draw the boxes on (the picture to start from)."""
    if len(labels) != len(boxes):
        raise ValueError(f"{len(labels)} labels for {len(boxes)} boxes")
    shown = len(boxes) if shown is None else shown
    subjects = [
        {"label": str(label or ""), "box": None if box is None else [float(v) for v in box]}
        for label, box in zip(labels, boxes, strict=True)
    ]
    return {
        "width": int(width),
        "height": int(height),
        "active": int(active),
        "shown": int(shown),
        "subjects": subjects,
        "background": background,
    }


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
