"""Vision-transformer fixtures (issue 9): tiny seeded ViT/DeiT/Swin exports, torch goldens and reference maps."""
