// A small canvas to draw a glyph on with the mouse, a pen or a finger: dark ink on white paper, exported
// as the base64 PNG that /adapt and /predict accept.

const SIZE = 112;
const PEN = 9;

/** A drawing pad of `size` CSS pixels; `onStroke` is called each time the pen lifts. */
export class Pad {
  constructor({ size = 84, label = "drawing", onStroke = () => {} } = {}) {
    this.canvas = document.createElement("canvas");
    this.canvas.className = "pad";
    this.canvas.width = this.canvas.height = SIZE;
    this.canvas.style.width = this.canvas.style.height = `${size}px`;
    this.canvas.setAttribute("aria-label", label);
    this.context = this.canvas.getContext("2d");
    this.onStroke = onStroke;
    this.clear();
    this.canvas.addEventListener("pointerdown", (event) => this.#down(event));
    this.canvas.addEventListener("pointermove", (event) => this.#move(event));
    for (const name of ["pointerup", "pointercancel"]) {
      this.canvas.addEventListener(name, () => this.#up());
    }
  }

  /** Whether anything has been drawn since the last clear. */
  get inked() {
    return this.canvas.dataset.strokes !== "0";
  }

  /** Blank paper again. */
  clear() {
    this.context.fillStyle = "#fff";
    this.context.fillRect(0, 0, SIZE, SIZE);
    this.canvas.dataset.strokes = "0";
    delete this.canvas.dataset.character;
    this.last = null;
  }

  /** Draw `character` as a hand might: in a font, turned, scaled and moved a little at random. */
  scribble(character) {
    this.clear();
    const context = this.context;
    context.save();
    context.translate(SIZE / 2 + jitter(8), SIZE / 2 + jitter(8));
    context.rotate(jitter(0.2));
    context.scale(0.85 + jitter(0.15), 0.85 + jitter(0.15));
    context.fillStyle = "#111";
    context.font = "64px sans-serif";
    context.textAlign = "center";
    context.textBaseline = "middle";
    context.fillText(character, 0, 0);
    context.restore();
    this.canvas.dataset.strokes = "1";
    this.canvas.dataset.character = character;
  }

  /** The drawing as a base64 PNG (without the data: URL's prefix). */
  png() {
    return this.canvas.toDataURL("image/png").split(",", 2)[1];
  }

  #point(event) {
    const box = this.canvas.getBoundingClientRect();
    return [((event.clientX - box.left) / box.width) * SIZE, ((event.clientY - box.top) / box.height) * SIZE];
  }

  #down(event) {
    this.canvas.setPointerCapture(event.pointerId);
    this.last = this.#point(event);
    this.#segment(this.last, this.last);
  }

  #move(event) {
    if (!this.last) return;
    const next = this.#point(event);
    this.#segment(this.last, next);
    this.last = next;
  }

  #up() {
    if (!this.last) return;
    this.last = null;
    delete this.canvas.dataset.character;
    this.canvas.dataset.strokes = String(Number(this.canvas.dataset.strokes) + 1);
    this.onStroke();
  }

  #segment([x0, y0], [x1, y1]) {
    const context = this.context;
    context.strokeStyle = "#111";
    context.lineWidth = PEN;
    context.lineCap = context.lineJoin = "round";
    context.beginPath();
    context.moveTo(x0, y0);
    context.lineTo(x1, y1);
    context.stroke();
  }
}

/** A uniform random number in [-size, size]. */
function jitter(size) {
  return (Math.random() * 2 - 1) * size;
}
