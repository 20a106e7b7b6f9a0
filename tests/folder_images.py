"""An ImageNet-style folder benchmark of small JPEGs, made in a test (class folders for ID, folders of OOD
images) with its custom benchmark YAML."""
import numpy as np
from PIL import Image


def folder_benchmark(root, size=32, per_class=24, stream=False):
    """ID: 3 classes of coloured noise (one dominant channel each), OOD: grey stripes and dark noise; JPEG files in
    class folders, as ImageNet's are laid out."""
    rng = np.random.default_rng(0)

    def save(folder, n, make):
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(make().astype(np.uint8)).save(folder / f"{i:03d}.jpg", quality=90)

    for c in range(3):
        def coloured(c=c):
            img = rng.integers(0, 90, (size, size, 3))
            img[..., c] += 150
            return img
        save(root / "train" / f"class{c}", per_class, coloured)
    def stripes():
        return np.tile(((np.arange(size) % 8 < 4) * 200)[None, :, None], (size, 1, 3)) + rng.integers(0, 40, (size, size, 3))

    save(root / "ood_val", 20, stripes)
    save(root / "stripes", 20, stripes)
    save(root / "dark", 20, lambda: rng.integers(0, 60, (size, size, 3)))
    yaml = root / "bench.yaml"
    yaml.write_text(f"""name: jpegs
stream: {'true' if stream else 'false'}
image_size: {size}
channels: 3
id:
  train: {{type: folder, path: train}}
ood_val:
  stripes-val: ood_val
near:
  stripes: stripes
far:
  dark: dark
""")
    return yaml
