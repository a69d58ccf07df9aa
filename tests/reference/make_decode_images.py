#!/usr/bin/env python3
"""Writes tests/reference/decode/: small JPEG and PNG files of every kind datasets/decode.cpp takes, and
the RGB pixels each should decode to (run by hand; tests/test_data.cpp reads them).

  /usr/bin/python3 tests/reference/make_decode_images.py

PIL writes the JPEGs (baseline 4:2:0, progressive, greyscale, CMYK) and the 8-bit PNGs it can write
(palette with a transparent entry, grey + alpha, RGBA, 1-bit grey); the expected pixels of those are PIL's
own decode, Image.open(f).convert("RGB"), which is torchvision's ImageFolder loader (PIL uses the system
libjpeg-turbo). The PNGs PIL cannot write (16-bit RGB, interlaced) are written here by hand, and their
expected pixels are the source's, alpha dropped and 16-bit samples cut to their high byte (stb_image's
conversion); PIL decodes them to the same, which is checked. (A 16-bit grey PNG is not among them: PIL
opens it as 32-bit integers and clips them at 255 in convert("RGB").)

expected.txt has a line a file: name, width, height, channels_in_file, the largest difference allowed
from <name>.rgb (h x w x 3 uint8): 0, except 1 for the CMYK JPEG, whose conversion to RGB rounds a little
differently from PIL's.
"""
import os
import struct
import zlib

import numpy as np
from PIL import Image

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "decode")
W, H = 23, 17  # odd: chroma upsampling at the edges


def pattern(channels=3, scale=1):
    y, x, c = np.meshgrid(np.arange(H), np.arange(W), np.arange(channels), indexing="ij")
    return (x * 11 + y * 7 + c * 60 + (x * y) % 13) * scale


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png(path, pixels, bit_depth, color_type, interlace=False):
    """pixels: H x W x C of uint8 or uint16 (big-endian in the file). Filter 0 on every row."""
    dtype = ">u2" if bit_depth == 16 else "u1"
    passes = [(0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2), (1, 0, 2, 1)]
    raw = b""
    for y0, x0, dy, dx in passes if interlace else [(0, 0, 1, 1)]:  # Adam7: (row, column, steps)
        sub = pixels[y0::dy, x0::dx]
        if sub.size:
            raw += b"".join(b"\0" + row.astype(dtype).tobytes() for row in sub)
    h, w = pixels.shape[:2]
    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, int(interlace))
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(raw)) +
                png_chunk(b"IEND", b""))


def main():
    os.makedirs(OUT, exist_ok=True)
    rgb = Image.fromarray((pattern() % 256).astype(np.uint8), "RGB")
    rgb.save(os.path.join(OUT, "baseline-420.jpg"), quality=85)
    rgb.save(os.path.join(OUT, "progressive.jpg"), quality=85, progressive=True)
    rgb.convert("L").save(os.path.join(OUT, "grey.jpg"), quality=85)
    Image.fromarray((pattern(4) % 256).astype(np.uint8), "CMYK").save(os.path.join(OUT, "cmyk.jpg"), quality=95)
    p = rgb.quantize(16)
    p.save(os.path.join(OUT, "palette-trns.png"), transparency=3)
    la = Image.fromarray((pattern(2) % 256).astype(np.uint8), "LA")
    la.save(os.path.join(OUT, "grey-alpha.png"))
    Image.fromarray((pattern(4) % 256).astype(np.uint8), "RGBA").save(os.path.join(OUT, "rgba.png"))
    rgb.convert("1").save(os.path.join(OUT, "grey-1bit.png"))

    lines = []
    for name, channels in [("baseline-420.jpg", 3), ("progressive.jpg", 3), ("grey.jpg", 1), ("cmyk.jpg", 3),
                           ("palette-trns.png", 4), ("grey-alpha.png", 2), ("rgba.png", 4),
                           ("grey-1bit.png", 1)]:
        pixels = np.asarray(Image.open(os.path.join(OUT, name)).convert("RGB"))
        pixels.tofile(os.path.join(OUT, name + ".rgb"))
        lines.append(f"{name} {W} {H} {channels} {1 if name == 'cmyk.jpg' else 0}")

    rgb16 = (pattern(3, 97) % 65536).astype(np.uint16)
    rgba8 = (pattern(4) % 256).astype(np.uint8)
    for name, pixels, depth, color_type, interlace, channels, want in [
        ("rgb16.png", rgb16, 16, 2, False, 3, rgb16 >> 8),
        ("rgba-interlaced.png", rgba8, 8, 6, True, 4, rgba8[..., :3]),
        ("rgb16-interlaced.png", rgb16, 16, 2, True, 3, rgb16 >> 8)]:
        write_png(os.path.join(OUT, name), pixels, depth, color_type, interlace)
        want = want.astype(np.uint8)
        assert (np.asarray(Image.open(os.path.join(OUT, name)).convert("RGB")) == want).all(), name
        want.tofile(os.path.join(OUT, name + ".rgb"))
        lines.append(f"{name} {W} {H} {channels} 0")
    with open(os.path.join(OUT, "expected.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
