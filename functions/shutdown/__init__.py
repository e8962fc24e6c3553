"""shutdown-gpu-lambda: idle stop / work-waiting start for the GPU instance(s). See decision.py for the rule."""
