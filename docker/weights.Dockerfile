# The model weights in an image of their own, copied into an emptyDir by an
# initContainer (see example/): code and weights ship separately.
#   cp /path/to/model.safetensors docker/model.safetensors
#   docker buildx build --platform linux/amd64,linux/arm64 -f docker/weights.Dockerfile -t dnet/inception-weights:epoch53 docker/
FROM busybox:1.37
COPY model.safetensors /model.safetensors
USER 65532:65532
