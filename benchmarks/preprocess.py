"""Time to turn one realistic source subject into the cohort format (issue 3, Must show).

The subject is a phantom written in the ACDC layout on a scanner-like grid: 256 x 216 pixels
of 1.4 mm, 12 slices 8 mm apart, 25 frames, int16, oblique affine. It is read, resampled to
1 x 1 x 10 mm, 32 frames and cropped to 384 x 384, then written atomically. Reports the
wall seconds of each step, the CPU seconds of all of them (comparable when the machine is
shared), peak memory, and the LV volume at ED/ES before and after.

    python -m benchmarks.preprocess            # records its row in docs/benchmarks.md
    python -m benchmarks.preprocess --quick    # a smaller grid and crop, records nothing
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import benchmark_parser, context, emit, peak_rss_gib, record
from fedcmr4d.data.acdc import load_acdc_subject
from fedcmr4d.data.cohort import LABEL_LV, write_subject
from fedcmr4d.data.phantom import ed_es_frames
from fedcmr4d.data.phantom_sources import SourceGeometry, write_acdc_patient
from fedcmr4d.data.preprocess import preprocess_subject

FULL = SourceGeometry(shape=(256, 216, 12), zooms=(1.4, 1.4, 8.0), frames=25)
QUICK = SourceGeometry(shape=(128, 108, 8), zooms=(2.8, 2.8, 8.0), frames=12)


def main() -> None:
    parser = benchmark_parser(__doc__, "small grid, record nothing")
    parser.add_argument("--image-size", type=int, default=None, help="default 384 (128 quick)")
    parser.add_argument("--frames", type=int, default=32)
    args = parser.parse_args()
    geometry = QUICK if args.quick else FULL
    image_size = args.image_size or (128 if args.quick else 384)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder, params, truth = write_acdc_patient(root / "training", 1, 7, geometry)
        t0, c0 = time.perf_counter(), time.process_time()
        source = load_acdc_subject(folder)
        t1 = time.perf_counter()
        cohort_subject = preprocess_subject(source, image_size=image_size, frames=args.frames)
        t2 = time.perf_counter()
        write_subject(root / "cohort", cohort_subject)
        t3, c3 = time.perf_counter(), time.process_time()
    ed, es = ed_es_frames(params, geometry.frames)
    voxel_ml = float(np.prod(geometry.zooms)) / 1000.0
    labels = cohort_subject.labels
    assert labels is not None
    out_es = cohort_subject.meta["es_frame"]
    result = {
        "benchmark": "preprocess",
        "source": "x".join(str(s) for s in (*geometry.shape, geometry.frames))
        + f" int16 {geometry.zooms[0]}x{geometry.zooms[1]}x{geometry.zooms[2]} mm oblique",
        "output": "x".join(str(s) for s in cohort_subject.cine.shape),
        "load_s": round(t1 - t0, 2),
        "resample_s": round(t2 - t1, 2),
        "write_s": round(t3 - t2, 2),
        "total_s": round(t3 - t0, 2),
        "cpu_s": round(c3 - c0, 2),  # CPU time: comparable when the machine is shared
        "peak_rss_gib": round(peak_rss_gib(), 2),
        "lv_ed_ml_source": round(float((truth[..., ed] == LABEL_LV).sum() * voxel_ml), 1),
        "lv_ed_ml_cohort": round(float((labels[..., 0] == LABEL_LV).sum() * 0.01), 1),
        "lv_es_ml_source": round(float((truth[..., es] == LABEL_LV).sum() * voxel_ml), 1),
        "lv_es_ml_cohort": round(float((labels[..., out_es] == LABEL_LV).sum() * 0.01), 1),
        **context(),
    }
    emit(result)
    if args.quick or args.no_record:
        return
    columns = [
        "source", "output", "load_s", "resample_s", "write_s", "total_s", "cpu_s", "peak_rss_gib",
        "lv_ed_ml_source", "lv_ed_ml_cohort", "lv_es_ml_source", "lv_es_ml_cohort",
        "machine", "date",
    ]  # fmt: skip
    record("preprocess", result["source"], columns, result, "python -m benchmarks.preprocess")


if __name__ == "__main__":
    main()
