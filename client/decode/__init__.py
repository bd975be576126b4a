"""Stage 1, decode: video files -> the model's input windows (OpenCV), and sample clips."""
