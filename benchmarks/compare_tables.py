"""Write the VQA-RAD (closed) and FSDD audio+image tables as CSV for `polymodal compare`, and print the commands.

    python benchmarks/compare_tables.py              # writes benchmarks/.work/compare/*.csv, prints the commands
    python benchmarks/compare_tables.py --snr -5     # also FSDD with white noise at -5 dB SNR added to every
                                                     # recording (fixed seed per file): audio made unreliable
"""

from __future__ import annotations

import argparse
import zlib

import numpy as np
import soundfile as sf
from common import WORK, fsdd_av_tables, vqa_rad_tables

COMMANDS = {
    "vqa_rad": "polymodal compare {d}/vqa_rad_train.csv --label answer --test {d}/vqa_rad_test.csv --fusions all "
               "--seeds 0,1,2 --robustness --epochs 30 --batch-size 32 --patience 8 "
               "--out benchmarks/results/compare_vqa_rad",
    # pooled fusions only: film/transformer would need Whisper's frame tokens, a second 30-s-window encoder pass
    # over all 3,000 clips (about 40 min on 2 shared cores)
    "fsdd": "polymodal compare {d}/fsdd_train.csv --label digit --test {d}/fsdd_test.csv "
            "--fusions concat,sum,weighted,product,attention,gated,tensor,lmf,late "
            "--seeds 0,1,2 --robustness --audio-encoder whisper-tiny.en --image-size 64 --epochs 30 "
            "--batch-size 64 --patience 6 --lr 2e-3 --column-types speaker=id --out benchmarks/results/compare_fsdd",
    "fsdd_noisy": "polymodal compare {d}/fsdd_noisy_train.csv --label digit --test {d}/fsdd_noisy_test.csv "
                  "--fusions all --seeds 0,1,2 --robustness --audio-encoder whisper-tiny.en --image-size 64 "
                  "--epochs 30 --batch-size 64 --patience 6 --lr 2e-3 --column-types speaker=id "
                  "--out benchmarks/results/compare_fsdd_noisy",
}


def noisy_copy(src: str, folder, snr_db: float) -> str:
    """`src` with white Gaussian noise at `snr_db` (relative to the clip's mean power), seeded by file name."""
    wave, sr = sf.read(src, dtype="float32")
    rng = np.random.default_rng(zlib.crc32(src.encode()))
    power = float(np.mean(wave ** 2)) or 1e-8
    noise = rng.normal(0, np.sqrt(power / 10 ** (snr_db / 10)), wave.shape).astype(np.float32)
    out = folder / src.rsplit("/", 1)[-1]
    sf.write(out, wave + noise, sr)
    return str(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--snr", type=float, default=None, help="also write a noisy FSDD table at this SNR (dB)")
    args = ap.parse_args()
    d = WORK / "compare"
    d.mkdir(parents=True, exist_ok=True)
    train, test = vqa_rad_tables(closed_only=True)
    train.to_csv(d / "vqa_rad_train.csv", index=False)
    test.to_csv(d / "vqa_rad_test.csv", index=False)
    train, test = fsdd_av_tables()
    train.to_csv(d / "fsdd_train.csv", index=False)
    test.to_csv(d / "fsdd_test.csv", index=False)
    if args.snr is not None:
        noisy = d / f"fsdd_snr{args.snr:g}"
        noisy.mkdir(exist_ok=True)
        for name, df in (("train", train), ("test", test)):
            df.assign(audio=[noisy_copy(p, noisy, args.snr) for p in df["audio"]]).to_csv(
                d / f"fsdd_noisy_{name}.csv", index=False)
    for key, cmd in COMMANDS.items():
        if key == "fsdd_noisy" and args.snr is None:
            continue
        print(cmd.format(d=d.relative_to(WORK.parent.parent) if d.is_relative_to(WORK.parent.parent) else d))


if __name__ == "__main__":
    main()
