"""ec.pipelines is reachable from the package and imports diffusers/transformers only when used."""

import subprocess
import sys


def test_pipelines_are_public_and_lazy():
    code = (
        "import sys, ebmcompose as ec; "
        "names = (ec.pipelines.ComposablePipeline, ec.pipelines.parse_prompt, ec.pipelines.make_tiny_pipeline); "
        "print(sorted(m for m in ('diffusers', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", f"import ebmcompose.pipelines pulled in {out}"
