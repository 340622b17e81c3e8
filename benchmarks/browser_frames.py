"""What the browser benchmarks (``bench_viewer.py``, ``bench_field.py``) share: Chromium's
flags and the in-page helpers that orbit the camera and force a frame to finish."""

# Software WebGL (SwiftShader), and no vsync or frame-rate cap, so frames/s measure rendering.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--enable-unsafe-swiftshader",
                 "--use-gl=angle", "--use-angle=swiftshader", "--disable-gpu-vsync",
                 "--disable-frame-rate-limit"]

# JavaScript defining `finish()` (read one pixel back, so the GPU process has drawn the frame)
# and `orbit(angle)` (turn the camera about the controls' target): put at the top of a
# page-side function that has `api` (renderer, camera, controls) in scope.
FRAME_HELPERS_JS = """
  const gl = api.renderer.getContext();
  const camera = api.camera, target = api.controls.target;
  const pixel = new Uint8Array(4);
  const finish = () => {
    gl.readPixels(0, 0, 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, pixel);
    gl.finish();
  };
  const orbit = (angle) => {
    const dx = camera.position.x - target.x, dz = camera.position.z - target.z;
    const c = Math.cos(angle), s = Math.sin(angle);
    camera.position.x = target.x + c * dx - s * dz;
    camera.position.z = target.z + s * dx + c * dz;
    camera.lookAt(target);
  };
"""
