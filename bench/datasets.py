"""Deterministic benchmark data: support tickets (multi-sentence, heavy-tailed lengths) and short titles."""

from __future__ import annotations

import atexit
import csv
import random
import shutil
import tempfile
from pathlib import Path

PRODUCTS = ["router", "laptop", "espresso machine", "hiking boot", "rain jacket", "e-reader", "headphones",
            "standing desk", "tent", "blender", "smartwatch", "bike light", "office chair", "air purifier"]
OPENERS = ["I bought the {p} three weeks ago and it has stopped working.",
           "My {p} arrived today, but the box was damaged and one part is missing.",
           "Since the last firmware update my {p} keeps disconnecting every few minutes.",
           "The {p} I ordered is not what the product page described.",
           "Could you help me set up the {p}? The manual is not clear about the first steps.",
           "I would like to return the {p}, because it is too small for my needs."]
DETAILS = ["I tried restarting it twice and holding the reset button for ten seconds.",
           "The light on the front blinks orange and then turns off.",
           "It makes a loud clicking noise when I turn it on in the morning.",
           "My neighbour has the same model and hers works fine with the same settings.",
           "I checked the cable, the power outlet and the fuse, and they are all fine.",
           "The app shows an error code E42 and then asks me to contact support.",
           "The battery drains from full to empty in about two hours, even when idle.",
           "I already contacted the shop, but they told me to write to you instead.",
           "It worked perfectly during the first week, which makes this more frustrating.",
           "The left side gets noticeably warmer than the right side after a while.",
           "I have attached photos of the serial number and the receipt.",
           "My order number should be in the email this message replies to.",
           "We use it in a small office with about twelve people connected at once.",
           "The replacement you sent last month has exactly the same problem."]
CLOSERS = ["Please let me know what I should do next.", "I would prefer a refund over a replacement.",
           "Thanks in advance for your help.", "Is this covered by the warranty?",
           "I need it working before Friday, so a quick answer would be great."]
ADJECTIVES = ["compact", "waterproof", "wireless", "lightweight", "stainless", "ergonomic", "foldable", "quiet",
              "rechargeable", "insulated", "heavy-duty", "minimalist", "vintage", "solar-powered"]
NOUNS = ["backpack", "kettle", "desk lamp", "speaker", "water bottle", "sleeping bag", "keyboard", "camera strap",
         "coffee grinder", "yoga mat", "phone stand", "duvet cover", "garden hose", "tool kit"]
EXTRAS = ["for travel and daily use", "with USB-C charging", "in three colours", "for small kitchens",
          "with a lifetime warranty", "made from recycled materials", "for beginners and professionals",
          "that fits in any bag", "with a quick-release buckle", "for cold winter nights"]


def ticket(rng: random.Random) -> str:
    product = rng.choice(PRODUCTS)
    # Heavy-tailed like real tickets: most are short, a few are long.
    details = min(int(rng.lognormvariate(0.6, 0.9)), 30)
    parts = [rng.choice(OPENERS).format(p=product)] + [rng.choice(DETAILS) for _ in range(details)]
    return " ".join(parts + [rng.choice(CLOSERS)])


def title(rng: random.Random) -> str:
    words = f"{rng.choice(ADJECTIVES)} {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} {rng.choice(EXTRAS)}"
    return words[0].upper() + words[1:]


def write_tickets(path: Path, rows: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    texts = [ticket(rng) for _ in range(rows)]
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["ticket_id", "customer", "priority", "body"])
        for i, text in enumerate(texts, 1):
            writer.writerow([f"T{i:06d}", f"customer{rng.randint(1, 900)}", rng.choice("LMH"), text])
    return texts


def write_titles(path: Path, rows: int, seed: int = 2) -> list[str]:
    rng = random.Random(seed)
    texts = [title(rng) for _ in range(rows)]
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["sku", "body", "price"])
        for i, text in enumerate(texts, 1):
            writer.writerow([f"{i:07d}", text, f"{rng.randint(5, 300)}.99"])
    return texts


def scratch_dir(prefix: str) -> Path:
    """A scratch folder, removed when the benchmark exits: a run writes up to gigabytes (Redis AOF, stores)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, True)
    return path
