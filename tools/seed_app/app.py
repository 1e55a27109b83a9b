"""The seed's Flask app (shared/seed/exercise-04-containerized-ml-inference.md, Task 1.1, src/app.py),
copied verbatim except for how the model is loaded (marked BENCHMARK CHANGE below).

Served as the seed's Dockerfile does, on loopback (tools/bench/http_bench.py):
  MODEL_PATH=W.safetensors gunicorn --chdir tools/seed_app --bind 127.0.0.1:5000 \
      --workers 2 --threads 4 --timeout 60 app:app
"""
from flask import Flask, request, jsonify
import torch
import torchvision.transforms as transforms
import torchvision.models as models
from PIL import Image
import io
import os
import logging
import time
from prometheus_client import Counter, Histogram, generate_latest

# Configure logging
logging.basicConfig(level=logging.INFO)
logger = logging.getLogger(__name__)

app = Flask(__name__)

# Prometheus metrics
REQUEST_COUNT = Counter('ml_inference_requests_total', 'Total inference requests')
REQUEST_LATENCY = Histogram('ml_inference_latency_seconds', 'Inference latency')
ERROR_COUNT = Counter('ml_inference_errors_total', 'Total errors')

# Load model
MODEL_PATH = os.environ.get('MODEL_PATH', '/models/resnet50.pth')
DEVICE = torch.device('cuda' if torch.cuda.is_available() else 'cpu')

logger.info(f"Loading model from {MODEL_PATH}")
# BENCHMARK CHANGE (the only one from the seed): nothing can be downloaded here, so instead of
# pretrained=True the same architecture loads torchvision-named safetensors from MODEL_PATH
# (`inference-server generate-weights`; they lack only *.num_batches_tracked, unused in eval).
from safetensors.torch import load_file
model = models.resnet50()
_missing, _unexpected = model.load_state_dict(load_file(MODEL_PATH), strict=False)
assert not _unexpected and all(k.endswith('num_batches_tracked') for k in _missing), (_missing, _unexpected)
model.eval()
model.to(DEVICE)
logger.info(f"Model loaded successfully on {DEVICE}")

# Image preprocessing
preprocess = transforms.Compose([
    transforms.Resize(256),
    transforms.CenterCrop(224),
    transforms.ToTensor(),
    transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
])

# ImageNet classes (top 10 for demo)
CLASSES = {
    281: 'tabby cat',
    282: 'tiger cat',
    283: 'Persian cat',
    284: 'Siamese cat',
    285: 'Egyptian cat',
    207: 'golden retriever',
    208: 'Labrador retriever',
    209: 'German shepherd',
    210: 'beagle',
    211: 'bloodhound'
}

@app.route('/health', methods=['GET'])
def health():
    """Health check endpoint"""
    return jsonify({
        'status': 'healthy',
        'model': 'resnet50',
        'device': str(DEVICE)
    }), 200

@app.route('/ready', methods=['GET'])
def ready():
    """Readiness check endpoint"""
    try:
        # Test model inference
        dummy_input = torch.randn(1, 3, 224, 224).to(DEVICE)
        with torch.no_grad():
            _ = model(dummy_input)
        return jsonify({'status': 'ready'}), 200
    except Exception as e:
        logger.error(f"Readiness check failed: {e}")
        return jsonify({'status': 'not ready', 'error': str(e)}), 503

@app.route('/predict', methods=['POST'])
def predict():
    """Image classification endpoint"""
    REQUEST_COUNT.inc()
    start_time = time.time()

    try:
        # Validate request
        if 'file' not in request.files:
            ERROR_COUNT.inc()
            return jsonify({'error': 'No file provided'}), 400

        file = request.files['file']
        if file.filename == '':
            ERROR_COUNT.inc()
            return jsonify({'error': 'Empty filename'}), 400

        # Load and preprocess image
        img_bytes = file.read()
        image = Image.open(io.BytesIO(img_bytes)).convert('RGB')
        input_tensor = preprocess(image).unsqueeze(0).to(DEVICE)

        # Inference
        with torch.no_grad():
            output = model(input_tensor)
            probabilities = torch.nn.functional.softmax(output[0], dim=0)

        # Get top 5 predictions
        top5_prob, top5_idx = torch.topk(probabilities, 5)

        predictions = []
        for i in range(5):
            idx = top5_idx[i].item()
            prob = top5_prob[i].item()
            class_name = CLASSES.get(idx, f'class_{idx}')
            predictions.append({
                'class': class_name,
                'confidence': round(prob, 4),
                'class_id': idx
            })

        # Record latency
        latency = time.time() - start_time
        REQUEST_LATENCY.observe(latency)

        logger.info(f"Prediction completed in {latency:.3f}s - Top class: {predictions[0]['class']}")

        return jsonify({
            'predictions': predictions,
            'latency_seconds': round(latency, 3),
            'model_version': '1.0'
        }), 200

    except Exception as e:
        ERROR_COUNT.inc()
        logger.error(f"Prediction error: {e}")
        return jsonify({'error': str(e)}), 500

@app.route('/metrics', methods=['GET'])
def metrics():
    """Prometheus metrics endpoint"""
    return generate_latest(), 200

if __name__ == '__main__':
    app.run(host='0.0.0.0', port=5000)
