"""The README's TensorBoard command serves every pass's pictures, read through TensorBoard's own HTTP data route."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter

README = Path(__file__).resolve().parents[2] / "README.md"
TAG = "explain/rollout/maps"
PASSES = 12  # more than TensorBoard's default of 10 images per tag


def readme_command() -> list[str]:
    """The README's ``tensorboard --logdir ...`` command, split as a shell would."""
    (command,) = re.findall(r"`(tensorboard --logdir [^`]+)`", README.read_text())
    return shlex.split(command)


def images_served(logdir: Path, argv: list[str]) -> int:
    """How many of ``TAG``'s images TensorBoard (the app ``argv`` starts, pointed at ``logdir``) serves."""
    import werkzeug.test
    from tensorboard import default, program
    from tensorboard.backend import application

    flags = list(argv[1:])
    flags[flags.index("--logdir") + 1] = str(logdir)
    board = program.TensorBoard(plugins=default.get_plugins())
    board.configure(argv=[None, *flags, "--reload_task", "blocking", "--reload_interval", "0", "--load_fast", "false"])
    provider, multiplexer = board._make_data_provider()
    app = application.TensorBoardWSGIApp(
        board.flags, board.plugin_loaders, provider, board.assets_zip_provider, multiplexer
    )
    response = werkzeug.test.Client(app).get(f"/data/plugin/images/images?run=.&tag={TAG}")
    assert response.status_code == 200, response.data[:300]
    return len(json.loads(response.data))


def test_the_readme_command_shows_every_pass(tmp_path):
    writer = SummaryWriter(str(tmp_path))
    for step in range(PASSES):  # one picture per explained pass, as the monitor logs them
        writer.add_image(TAG, torch.rand(3, 8, 8), global_step=step)
    writer.close()
    command = readme_command()
    assert command[0] == "tensorboard" and "--samples_per_plugin" in command
    assert images_served(tmp_path, command) == PASSES  # (images=0, the README's old advice, served 0 on 2.21)
