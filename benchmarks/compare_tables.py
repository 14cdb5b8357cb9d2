"""Write the VQA-RAD (closed) and FSDD audio+image tables as CSV for `polymodal compare`, and print the commands.

    python benchmarks/compare_tables.py        # writes benchmarks/.work/compare/*.csv and prints the commands
"""

from __future__ import annotations

from common import WORK, fsdd_av_tables, vqa_rad_tables

COMMANDS = {
    "vqa_rad": "polymodal compare {d}/vqa_rad_train.csv --label answer --test {d}/vqa_rad_test.csv --fusions all "
               "--seeds 0,1,2 --robustness --epochs 30 --batch-size 32 --patience 8 "
               "--out benchmarks/results/compare_vqa_rad",
    "fsdd": "polymodal compare {d}/fsdd_train.csv --label digit --test {d}/fsdd_test.csv --fusions all "
            "--seeds 0,1,2 --robustness --audio-encoder whisper-tiny.en --image-size 64 --epochs 30 "
            "--batch-size 64 --patience 6 --lr 2e-3 --column-types speaker=id --out benchmarks/results/compare_fsdd",
}


def main() -> None:
    d = WORK / "compare"
    d.mkdir(parents=True, exist_ok=True)
    train, test = vqa_rad_tables(closed_only=True)
    train.to_csv(d / "vqa_rad_train.csv", index=False)
    test.to_csv(d / "vqa_rad_test.csv", index=False)
    train, test = fsdd_av_tables()
    train.to_csv(d / "fsdd_train.csv", index=False)
    test.to_csv(d / "fsdd_test.csv", index=False)
    for cmd in COMMANDS.values():
        print(cmd.format(d=d.relative_to(WORK.parent.parent) if d.is_relative_to(WORK.parent.parent) else d))


if __name__ == "__main__":
    main()
