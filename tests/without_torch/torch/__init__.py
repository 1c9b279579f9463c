"""Put on the path of the commands the tests start (tests/apps.py), this makes `import torch` fail as it does where
torch is not installed: the project's commands never need torch (a test-only dependency), and every command test
then shows it. It also spares each command the 2 s that tensorboardX spends importing torch when it finds it."""

raise ImportError("torch is hidden from the commands the tests start (tests/without_torch): sam-jax runs without it")
