"""`forgellm serve` with faults planted, for the tests: run `python tests/serve/faulty_serve.py serve ...`.

The engine runs in a child process started by multiprocessing's spawn, which imports this script
again there as `__mp_main__`; the faults are planted in both processes on import, and only then.
- A request whose prompt is STEP_FAULT_PROMPT makes the engine step that runs it raise (as a bug
  in a kernel launch or the sampler would): that request must fail alone.
- A request whose prompt is OUTPUT_FAULT_PROMPT makes the engine process send an output the
  server cannot decode: that request must fail alone.
- A request whose prompt is WIRE_FAULT_PROMPT makes the engine process send a message the server's
  reader cannot parse: the engine must be declared dead, not hang with /health at 200.
Importing this module from a test only reads the prompts.
"""

from __future__ import annotations

import sys

STEP_FAULT_PROMPT = [7, 7, 7, 7, 7, 4001]
OUTPUT_FAULT_PROMPT = [7, 7, 7, 7, 7, 4002]
WIRE_FAULT_PROMPT = [7, 7, 7, 7, 7, 4003]


def _plant_faults() -> None:
    from forgellm.engine import process_engine
    from forgellm.worker.model_runner import ModelRunner

    launch = ModelRunner.launch

    def launch_with_fault(self, scheduler_output, in_flight=None, **options):  # noqa: ANN001, ANN003, ANN202
        if any(s.request.prompt_token_ids == STEP_FAULT_PROMPT for s in scheduler_output.scheduled):
            raise RuntimeError("a fault planted in the step")
        return launch(self, scheduler_output, in_flight, **options)

    encode_output = process_engine.encode_output

    def encode_with_fault(out):  # noqa: ANN001, ANN202
        if out.prompt_token_ids == OUTPUT_FAULT_PROMPT:
            return (out.request_id, "not an output")
        if out.prompt_token_ids == WIRE_FAULT_PROMPT:
            return 12345  # not even a tuple: the reader cannot tell whose output it is
        return encode_output(out)

    ModelRunner.launch = launch_with_fault
    process_engine.encode_output = encode_with_fault


if __name__ in ("__main__", "__mp_main__"):
    _plant_faults()

if __name__ == "__main__":
    from forgellm.cli.main import main

    sys.exit(main())
