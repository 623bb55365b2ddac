"""Prior-hole closure: how much of the gap between Gaussian-prior samples and reconstructions an EBM prior closes.

Pure arithmetic on FIDs at equal N, shared by `pipeline` (RUN/eval/summary.json) and `report`.
"""

from __future__ import annotations

from typing import Any

NAMED_SOURCES = ("gaussian", "recon")
"""FID sources that are not EBM priors: the backbone's Gaussian prior and its reconstructions."""


def fid_summary(fids: dict[str, float], n: int | None) -> dict[str, Any]:
    """FID per source and, for each EBM prior, the prior-hole closure (FID_gauss - FID_ebm) / (FID_gauss - FID_recon)."""
    gauss, recon = fids["gaussian"], fids["recon"]
    priors = [k for k in fids if k not in NAMED_SOURCES]
    closure = {k: (gauss - fids[k]) / (gauss - recon) if gauss != recon else None for k in priors}
    return {"n": n, "fid": fids, "prior_hole_closure": closure, "fid_ratio_to_gaussian": {k: fids[k] / gauss for k in priors}}
