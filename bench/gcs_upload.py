"""Upload and verify throughput of GCSStorage against fake-gcs-server, and peak RSS."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import psutil

from bqx_assets.core.metrics import Stopwatch, peak_rss_bytes
from bqx_assets.core.storage import file_crc32c
from bqx_assets.core.storage.gcs import UPLOAD_CHUNK_BYTES, GCSStorage
from emulators.gcs import run_gcs_emulator

MB = 1_000_000


def _write_random(path: Path, size: int) -> None:
    # One random block repeated with a counter: incompressible enough, written without holding
    # more than a block in memory.
    block = bytearray(os.urandom(8 * 1024 * 1024))
    with open(path, "wb") as f:
        written, i = 0, 0
        while written < size:
            block[:8] = i.to_bytes(8, "little")
            n = min(len(block), size - written)
            f.write(block[:n])
            written, i = written + n, i + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mb", type=int, default=1024, help="file size in MiB")
    parser.add_argument("--chunk-mb", type=int, default=UPLOAD_CHUNK_BYTES // 2**20)
    parser.add_argument("--backend", choices=["filesystem", "memory"], default="filesystem")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bqx-gcs-bench-") as tmp:
        work = Path(tmp)
        local = work / "training_eurusd.parquet"
        _write_random(local, args.size_mb * 2**20)
        size = local.stat().st_size
        with run_gcs_emulator(work / "emulator", backend=args.backend) as emulator:
            os.environ["STORAGE_EMULATOR_HOST"] = emulator.endpoint
            bucket = emulator.create_bucket("bqx-ml-output")
            storage = GCSStorage(bucket, chunk_size=args.chunk_mb * 2**20)
            rss_before = psutil.Process().memory_info().rss
            watch = Stopwatch()
            info = storage.put_file(local, "training_eurusd.parquet")
            put_seconds = watch.seconds
            peak_after_upload = peak_rss_bytes()
            crc_watch = Stopwatch()
            local_crc = file_crc32c(local)
            crc_seconds = crc_watch.seconds
            get_watch = Stopwatch()
            back = storage.get_file("training_eurusd.parquet", work / "back.parquet")
            get_seconds = get_watch.seconds
            server_rss = psutil.Process(emulator.process.pid).memory_info().rss
            assert info.crc32c == local_crc == file_crc32c(back)
        print(
            json.dumps(
                {
                    "size_bytes": size,
                    "backend": args.backend,
                    "chunk_mib": args.chunk_mb,
                    "attempts": info.attempts,
                    "upload_seconds": round(info.upload_seconds, 2),
                    "upload_mb_per_s": round(info.upload_mb_per_s, 1),
                    "verify_seconds": round(info.verify_seconds, 2),
                    "verify_mb_per_s": round(size / MB / info.verify_seconds, 1),
                    "put_file_seconds": round(put_seconds, 2),
                    "put_file_mb_per_s": round(size / MB / put_seconds, 1),
                    "local_crc32c_mb_per_s": round(size / MB / crc_seconds, 1),
                    "download_verify_seconds": round(get_seconds, 2),
                    "download_verify_mb_per_s": round(size / MB / get_seconds, 1),
                    "rss_before_upload_mib": round(rss_before / 2**20, 1),
                    "peak_rss_after_upload_mib": round(peak_after_upload / 2**20, 1),
                    "peak_rss_mib": round(peak_rss_bytes() / 2**20, 1),
                    "emulator_rss_mib": round(server_rss / 2**20, 1),
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
