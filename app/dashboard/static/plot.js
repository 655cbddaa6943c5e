// Line charts on a canvas: axes with round ticks and labels, lines, points and a legend, drawn sharp at
// the screen's pixel ratio; clicks map back to data coordinates.

const MARGIN = { left: 48, right: 12, top: 12, bottom: 36 };
const FONT = "12px system-ui, sans-serif";
const AXIS = "#5b6170";
const GRID = "#e6e8ee";

/** Round tick values covering [lo, hi], about `count` of them. */
function ticks(lo, hi, count = 6) {
  const raw = (hi - lo) / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw);
  const first = Math.ceil(lo / step) * step;
  const values = [];
  for (let v = first; v <= hi + step * 1e-9; v += step) values.push(Math.abs(v) < step * 1e-9 ? 0 : v);
  return values;
}

/** The range of every y (or x) in `series`, padded; `fallback` when there is nothing finite. */
export function extent(series, axis, fallback) {
  const values = series.flatMap((s) => s.points.map((p) => p[axis])).filter(Number.isFinite);
  if (!values.length) return fallback;
  let lo = Math.min(...values);
  let hi = Math.max(...values);
  if (lo === hi) [lo, hi] = [lo - 1, hi + 1];
  const pad = (hi - lo) * 0.06;
  return [lo - pad, hi + pad];
}

/** A chart on `canvas` with axis labels; `draw` paints it whole from data. */
export class Chart {
  constructor(canvas, { xLabel, yLabel }) {
    this.canvas = canvas;
    this.xLabel = xLabel;
    this.yLabel = yLabel;
    this.x = [0, 1];
    this.y = [0, 1];
  }

  /** Paint `series` ({points: [[x, y]], color, width, dash, label}) and `markers` ({x, y, color}) over
   * axes spanning `x` and `y` ([lo, hi]). */
  draw({ x, y, series = [], markers = [] }) {
    this.x = x;
    this.y = y;
    const context = this.#context();
    const { width, height } = this.#size();
    context.clearRect(0, 0, width, height);
    this.#axes(context, width, height);
    context.save();
    context.beginPath();
    context.rect(
      MARGIN.left,
      MARGIN.top,
      width - MARGIN.left - MARGIN.right,
      height - MARGIN.top - MARGIN.bottom,
    );
    context.clip();
    for (const line of series) this.#line(context, line);
    for (const marker of markers) {
      context.beginPath();
      context.arc(this.px(marker.x), this.py(marker.y), 5, 0, 2 * Math.PI);
      context.fillStyle = marker.color;
      context.fill();
      context.strokeStyle = "#fff";
      context.lineWidth = 1.5;
      context.stroke();
    }
    context.restore();
    this.#legend(
      context,
      width,
      series.filter((s) => s.label),
    );
  }

  /** Data coordinates of a mouse event on the canvas. */
  toData(event) {
    const box = this.canvas.getBoundingClientRect();
    const { width, height } = this.#size();
    const fx = (event.clientX - box.left - MARGIN.left) / (width - MARGIN.left - MARGIN.right);
    const fy = (event.clientY - box.top - MARGIN.top) / (height - MARGIN.top - MARGIN.bottom);
    return [this.x[0] + fx * (this.x[1] - this.x[0]), this.y[1] - fy * (this.y[1] - this.y[0])];
  }

  /** Canvas (CSS pixel) coordinates of data `x` and `y`. */
  px(value) {
    const { width } = this.#size();
    return (
      MARGIN.left + ((value - this.x[0]) / (this.x[1] - this.x[0])) * (width - MARGIN.left - MARGIN.right)
    );
  }

  py(value) {
    const { height } = this.#size();
    const plot = height - MARGIN.top - MARGIN.bottom;
    return MARGIN.top + plot - ((value - this.y[0]) / (this.y[1] - this.y[0])) * plot;
  }

  #size() {
    return { width: this.canvas.clientWidth, height: this.canvas.clientHeight };
  }

  #context() {
    const ratio = window.devicePixelRatio || 1;
    const { width, height } = this.#size();
    if (this.canvas.width !== Math.round(width * ratio)) this.canvas.width = Math.round(width * ratio);
    if (this.canvas.height !== Math.round(height * ratio)) this.canvas.height = Math.round(height * ratio);
    const context = this.canvas.getContext("2d");
    context.setTransform(ratio, 0, 0, ratio, 0, 0);
    return context;
  }

  #axes(context, width, height) {
    const bottom = height - MARGIN.bottom;
    const right = width - MARGIN.right;
    context.font = FONT;
    context.lineWidth = 1;
    context.fillStyle = AXIS;
    context.textAlign = "center";
    context.textBaseline = "top";
    for (const value of ticks(...this.x, Math.max(2, Math.floor(width / 80)))) {
      const at = this.px(value);
      this.#rule(context, at, MARGIN.top, at, bottom);
      context.fillText(label(value), at, bottom + 5);
    }
    context.textAlign = "right";
    context.textBaseline = "middle";
    for (const value of ticks(...this.y, Math.max(2, Math.floor(height / 50)))) {
      const at = this.py(value);
      this.#rule(context, MARGIN.left, at, right, at);
      context.fillText(label(value), MARGIN.left - 6, at);
    }
    context.strokeStyle = AXIS;
    context.strokeRect(MARGIN.left, MARGIN.top, right - MARGIN.left, bottom - MARGIN.top);
    context.textAlign = "center";
    context.textBaseline = "bottom";
    context.fillText(this.xLabel, MARGIN.left + (right - MARGIN.left) / 2, height - 2);
    context.save();
    context.translate(12, MARGIN.top + (bottom - MARGIN.top) / 2);
    context.rotate(-Math.PI / 2);
    context.textBaseline = "middle";
    context.fillText(this.yLabel, 0, 0);
    context.restore();
  }

  #rule(context, x0, y0, x1, y1) {
    context.strokeStyle = GRID;
    context.beginPath();
    context.moveTo(x0, y0);
    context.lineTo(x1, y1);
    context.stroke();
  }

  #line(context, { points, color, width = 2, dash = [] }) {
    context.strokeStyle = color;
    context.lineWidth = width;
    context.setLineDash(dash);
    context.beginPath();
    let drawing = false;
    for (const [x, y] of points) {
      if (!Number.isFinite(y)) {
        drawing = false;
        continue;
      }
      if (drawing) context.lineTo(this.px(x), this.py(y));
      else context.moveTo(this.px(x), this.py(y));
      drawing = true;
    }
    context.stroke();
    context.setLineDash([]);
    if (points.length === 1) {
      context.fillStyle = color;
      context.fillRect(this.px(points[0][0]) - 2, this.py(points[0][1]) - 2, 4, 4);
    }
  }

  #legend(context, width, entries) {
    context.font = FONT;
    context.textAlign = "left";
    context.textBaseline = "middle";
    const textWidth = Math.max(0, ...entries.map((e) => context.measureText(e.label).width));
    const left = width - MARGIN.right - textWidth - 40;
    entries.forEach((entry, i) => {
      const y = MARGIN.top + 12 + i * 18;
      context.fillStyle = "rgba(255, 255, 255, 0.85)";
      context.fillRect(left - 4, y - 9, textWidth + 38, 18);
      context.strokeStyle = entry.color;
      context.lineWidth = entry.width || 2;
      context.setLineDash(entry.dash || []);
      context.beginPath();
      context.moveTo(left, y);
      context.lineTo(left + 24, y);
      context.stroke();
      context.setLineDash([]);
      context.fillStyle = AXIS;
      context.fillText(entry.label, left + 30, y);
    });
  }
}

/** A tick's text: short, without float noise. */
function label(value) {
  return Number(value.toPrecision(6)).toString();
}
