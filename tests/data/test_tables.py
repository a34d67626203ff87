import json

import pytest

from dnirecon.errors import DataError
from dnirecon.tables import table1, write_table

ROWS = [
    dict(data="CORPD", accel=4, method="SN", metrics={"nmse": (0.0123, 0.004), "psnr": (31.456, 1.2),
                                                    "ssim": (0.8712, 0.021)}),
    dict(data="ALL", accel=8.0, method="interpSN", metrics={"nmse": (0.02, 0.01), "psnr": (29.0, 2.0),
                                                           "ssim": (0.8, 0.03), "hfen": (0.3, 0.1)}),
]


def test_table1_markdown_has_the_paper_columns():
    md = table1(ROWS).splitlines()
    assert md[0] == "| Data | AF | Method | NMSE | PSNR | SSIM | HFEN |"
    assert md[2] == "| CORPD | 4x | SN | 0.0123 ± 0.0040 | 31.46 ± 1.20 | 0.8712 ± 0.0210 | - |"
    assert md[3].startswith("| ALL | 8x | interpSN |") and md[3].endswith("0.3000 ± 0.1000 |")


def test_write_table_writes_md_csv_json(tmp_path):
    paths = write_table(ROWS, tmp_path / "out", "baselines")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["baselines.csv", "baselines.json",
                                                                     "baselines.md"]
    data = json.loads(paths["json"].read_text())
    assert data[0]["metrics"]["psnr"] == {"mean": 31.456, "std": 1.2}
    assert paths["csv"].read_text().splitlines()[0].startswith("data,accel,method,nmse_mean,nmse_std")


def test_bad_row_is_named():
    with pytest.raises(DataError, match="row 0 has no 'method'"):
        table1([dict(data="ALL", accel=4, metrics={})])
