"""Write the toy demo's reference images: held-out subjects of the toy world (their colour pairs
never occur in training), as a user would bring them.

    python examples/toy/make_references.py
"""

from __future__ import annotations

from pathlib import Path

from msdiffusion.toyworld.world import held_out_subjects

HERE = Path(__file__).resolve().parent
PICKS = {0: "star", 2: "moon", 3: "cross", 5: "ball"}  # index in held_out_subjects(seed=0)


def main() -> None:
    subjects = held_out_subjects(max(PICKS) + 1, seed=0)
    for index, name in PICKS.items():
        image, phrase, identity = subjects[index]
        assert phrase == name, (phrase, name)
        image.save(HERE / f"{name}.png")
        print(f"{name}.png: {identity.primary}/{identity.secondary} {identity.pattern}")


if __name__ == "__main__":
    main()
