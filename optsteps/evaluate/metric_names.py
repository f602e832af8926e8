"""The names of the metrics an evaluation row can carry (``optsteps.evaluate``), in display order: one list for the
evaluation's tables, the registry and the params check of what champions rank by (``mlflow.metric``)."""

METRICS = (
    "fid_digitsnet",
    "kid_digitsnet",
    "fid_teacher_digitsnet",
    "kid_teacher_digitsnet",
    "adherence_digitsnet",
    "accuracy_digitsnet",
    "precision_digitsnet",
    "fid_inception",
    "kid_inception",
    "fid_teacher_inception",
    "kid_teacher_inception",
    "l2_to_teacher",
    "psnr_to_teacher",
    "geneval_overall",
)

__all__ = ["METRICS"]
