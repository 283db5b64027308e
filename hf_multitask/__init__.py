"""hf-multitask: multitask fine-tuning of BERT-family encoders on the Hugging Face stack."""

from transformers import AutoConfig, AutoModel

from . import hub, schemes, surgery
from .backbone import default_backbone
from .configuration import MultitaskConfig
from .data import DataError, DataWarning, load_task_data, load_text_label_files, partial_label_tasks, train_validation_split
from .encoding import MultitaskCollator, encode_task
from .metrics import accuracy, compute_task_metrics, overall_score, pearson
from .modeling import MultitaskModel, MultitaskOutput
from .onnx_backend import OnnxMultitaskModel
from .onnx_export import export_onnx
from .pipeline import MultitaskPipeline, register_multitask_pipeline
from .predict import TaskPredictions, evaluate, predict, write_predictions
from .routed import RoutedMultitaskConfig, RoutedMultitaskModel
from .task_types import TaskType, get_task_type, register_task_type
from .tasks import TaskSpec, quora_task, reference_tasks, sst_task, sts_task, upos_task
from .telemetry import ConflictTelemetryCallback, plot_conflicts
from .trainer import MultitaskTrainer, MultitaskTrainingArguments
from .tweeteval import tweeteval_tasks

__version__ = "0.1.0"

AutoConfig.register(MultitaskConfig.model_type, MultitaskConfig, exist_ok=True)
AutoModel.register(MultitaskConfig, MultitaskModel, exist_ok=True)
AutoConfig.register(RoutedMultitaskConfig.model_type, RoutedMultitaskConfig, exist_ok=True)
AutoModel.register(RoutedMultitaskConfig, RoutedMultitaskModel, exist_ok=True)

# pipeline("multitask-text", model=...) with the package imported; a folder written by `hf-multitask export` loads on ONNX Runtime
register_multitask_pipeline(OnnxMultitaskModel)

__all__ = [
    "MultitaskPipeline",
    "OnnxMultitaskModel",
    "export_onnx",
    "partial_label_tasks",
    "TaskType",
    "upos_task",
    "get_task_type",
    "register_task_type",
    "ConflictTelemetryCallback",
    "MultitaskTrainer",
    "MultitaskTrainingArguments",
    "plot_conflicts",
    "DataError",
    "DataWarning",
    "MultitaskCollator",
    "TaskPredictions",
    "accuracy",
    "compute_task_metrics",
    "encode_task",
    "evaluate",
    "load_task_data",
    "load_text_label_files",
    "tweeteval_tasks",
    "overall_score",
    "pearson",
    "predict",
    "train_validation_split",
    "write_predictions",
    "MultitaskConfig",
    "MultitaskModel",
    "MultitaskOutput",
    "RoutedMultitaskConfig",
    "RoutedMultitaskModel",
    "TaskSpec",
    "default_backbone",
    "quora_task",
    "reference_tasks",
    "hub",
    "schemes",
    "surgery",
    "sst_task",
    "sts_task",
]
