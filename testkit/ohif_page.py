"""What the browser test and the viewer benchmark look at in OHIF: the image, as pixels.

OHIF (cornerstone3D) renders each viewport with WebGL off screen and copies the result
into the viewport's on-screen 2D canvas (`canvas.cornerstone-canvas`), so reading that
canvas back gives what the user sees. An image counts as shown when a good share of the
canvas is lit and it varies (a flat grey or black canvas is not an image).
"""

from __future__ import annotations

from typing import Any

# Every 4th pixel of the first viewport's canvas: its size, the lit share, mean and spread (0-255).
CANVAS_STATS_JS = """() => {
  const canvas = document.querySelector('canvas.cornerstone-canvas');
  if (!canvas || !canvas.width || !canvas.height) return null;
  const context = canvas.getContext('2d');
  if (!context) return null;
  const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
  let n = 0, lit = 0, sum = 0, squares = 0;
  for (let i = 0; i < data.length; i += 16) {
    const v = (data[i] + data[i + 1] + data[i + 2]) / 3;
    n += 1; if (v > 8) lit += 1; sum += v; squares += v * v;
  }
  const mean = sum / n;
  return {width: canvas.width, height: canvas.height, lit: lit / n, mean: mean,
          std: Math.sqrt(Math.max(0, squares / n - mean * mean))};
}"""
MIN_LIT = 0.2  # share of the canvas's pixels that are not black
MIN_STD = 10.0  # spread of the grey levels: not one flat colour
IMAGE_SHOWN_JS = f"""() => {{
  const stats = ({CANVAS_STATS_JS})();
  return stats !== null && stats.lit > {MIN_LIT} && stats.std > {MIN_STD};
}}"""


def canvas_stats(page: Any) -> dict[str, float] | None:  # playwright Page
    stats: dict[str, float] | None = page.evaluate(CANVAS_STATS_JS)
    return stats


def wait_for_image(page: Any, timeout_ms: float = 60_000) -> dict[str, float]:
    """Wait until the first viewport shows an image; returns its canvas statistics."""
    page.wait_for_function(IMAGE_SHOWN_JS, timeout=timeout_ms, polling=50)
    stats = canvas_stats(page)
    assert stats is not None
    return stats
