// Contrast of every visible text against what is behind it (WCAG 2's formula): an HTML
// element's own text against the first ancestor with a background colour; an SVG text's
// fill against the first rect of its group (a node's box, an edge label's), else the HTML
// behind the SVG. Returns the texts below 4.5:1, and how many were checked. Run by
// tests/e2e/browser.py (Browser.contrast) as a function body.
function rgb(s) { const m = s.match(/[\d.]+/g); return m ? m.map(Number) : null; }
function lum(c) { const f = v => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
  return 0.2126 * f(c[0]) + 0.7152 * f(c[1]) + 0.0722 * f(c[2]); }
function ratio(a, b) { const x = lum(a), y = lum(b); return (Math.max(x, y) + 0.05) / (Math.min(x, y) + 0.05); }
function htmlBg(e) { for (; e; e = e.parentElement) { const c = rgb(getComputedStyle(e).backgroundColor);
  if (c && (c.length < 4 || c[3] > 0)) return c; } return [255, 255, 255]; }
const bad = []; let checked = 0;
for (const e of document.querySelectorAll('body *')) {
  const own = [...e.childNodes].some(n => n.nodeType === 3 && n.textContent.trim());
  if (!own || !e.getClientRects().length) continue;
  const style = getComputedStyle(e);
  if (style.visibility === 'hidden' || style.display === 'none') continue;
  let fg, bg;
  if (e instanceof SVGElement) {
    fg = rgb(style.fill);
    const box = e.parentElement.querySelector(':scope > rect');
    bg = box ? rgb(getComputedStyle(box).fill) : htmlBg(e.closest('svg').parentElement);
    if (e.closest('svg.plot')) bg = htmlBg(e.closest('svg.plot'));
  } else { fg = rgb(style.color); bg = htmlBg(e); }
  checked++;
  const r = ratio(fg, bg);
  if (r < 4.5) bad.push({text: e.textContent.trim().slice(0, 60), ratio: r.toFixed(2), fg: String(fg), bg: String(bg)});
}
return [bad, checked];
