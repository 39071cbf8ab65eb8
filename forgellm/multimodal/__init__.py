"""Images and video frames for vision-language models: loading, preprocessing, encoder caching."""
