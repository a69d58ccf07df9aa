#!/usr/bin/env python3
"""Writes tests/reference/resize_aa.bin, the reference of the antialiased bilinear resize (run by hand).

  /usr/bin/python3 tests/reference/make_resize_reference.py

Part 1, torch: a synthetic 61 x 83 RGB pattern, cropped and resized by
torch.nn.functional.interpolate(mode="bilinear", antialias=True, align_corners=False) in float32, the
tensor path of torchvision's resize. Part 2, PIL: the torchvision ImageNet eval transform on PIL images,
Resize(64) (PIL BILINEAR, antialiased) then CenterCrop(56), of a larger synthetic image of the same
pattern (no data set image is copied into the repository), as uint8 (before ToTensor).

Format, little-endian:
  int32 magic 0x31415352 ("RSA1"), version 2
  int32 H, W, ncases; per case: int32 top, left, height, width, out_h, out_w; float32 [3][out_h][out_w]
  int32 H2, W2 (the PIL input's size); int32 resize, crop; uint8 [3][crop][crop]
"""
import os
import struct

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

H, W = 61, 83
CASES = [  # top, left, height, width of the crop, out_h, out_w
    (0, 0, 61, 83, 17, 29),  # downscale both axes
    (0, 0, 61, 83, 66, 20),  # upscale h, downscale w
    (5, 7, 40, 50, 24, 24),  # crop, then downscale (RandomResizedCrop)
    (3, 2, 20, 30, 27, 41),  # crop, then upscale
]
H2, W2 = 150, 211
RESIZE, CROP = 64, 56


def pattern(h=H, w=W):
    # The same formula is in tests/test_data.cpp: value (x*x*7 + y*13 + c*85 + x*y*3) % 256 at row y, column x.
    y, x, c = np.meshgrid(np.arange(h), np.arange(w), np.arange(3), indexing="ij")
    return ((x * x * 7 + y * 13 + c * 85 + x * y * 3) % 256).astype(np.uint8)  # H x W x 3


def torch_resize(img, top, left, h, w, oh, ow):
    t = torch.from_numpy(img.astype(np.float32)).permute(2, 0, 1)[None, :, top:top + h, left:left + w]
    return F.interpolate(t, size=(oh, ow), mode="bilinear", align_corners=False, antialias=True)[0].numpy()


def pil_eval(img):
    im = Image.fromarray(img, "RGB")
    w, h = im.size  # torchvision Resize(int): shorter side to RESIZE, longer int(RESIZE * long / short)
    nw, nh = (RESIZE, int(RESIZE * h / w)) if w <= h else (int(RESIZE * w / h), RESIZE)
    im = im.resize((nw, nh), Image.BILINEAR)
    top, left = int(round((nh - CROP) / 2.0)), int(round((nw - CROP) / 2.0))
    im = im.crop((left, top, left + CROP, top + CROP))
    return np.asarray(im).transpose(2, 0, 1).copy()  # 3 x CROP x CROP


def main():
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "resize_aa.bin")
    img = pattern()
    with open(out, "wb") as f:
        f.write(struct.pack("<5i", 0x31415352, 2, H, W, len(CASES)))
        for case in CASES:
            f.write(struct.pack("<6i", *case))
            f.write(torch_resize(img, *case).astype("<f4").tobytes())
        f.write(struct.pack("<4i", H2, W2, RESIZE, CROP))
        f.write(pil_eval(pattern(H2, W2)).astype(np.uint8).tobytes())
    print("wrote", out, os.path.getsize(out), "bytes")


if __name__ == "__main__":
    main()
