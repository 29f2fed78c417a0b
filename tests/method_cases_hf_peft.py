"""Contract cases for the Hugging Face peft family."""
from conftest import DEPTH, DIM

CASES = {
    # LoRA on qkv: rank x (D in + 3D out) per block, the same count as vpeft's own LoRA
    "peft": ({"tuner": "lora", "rank": 4}, lambda: DEPTH * 4 * (DIM + 3 * DIM)),
}
