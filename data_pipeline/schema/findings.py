"""The finding vocabulary: which findings there are, what they are called and how their presence is asked.

Data, not a generator: the phantom draws these findings and phrases its questions with these
words, and the default question script (`cxrtrek_jax.decoding.question_script`) and the
grounding benchmark ask a radiograph about them in the same words, so neither needs the
phantom itself.
"""

from __future__ import annotations

__all__ = ["FINDING_KINDS", "FINDING_NAMES", "CHEXPERT_LABELS", "PATHOLOGIES", "PRESENCE_QUESTIONS"]

# The phantom's sampling order; also the order findings are listed and asked in.
FINDING_KINDS = ("support_devices", "cardiomegaly", "pleural_effusion", "pneumothorax", "consolidation", "nodule")
FINDING_NAMES = {
    "support_devices": "support devices",
    "cardiomegaly": "cardiomegaly",
    "pleural_effusion": "pleural effusion",
    "pneumothorax": "pneumothorax",
    "consolidation": "consolidation",
    "nodule": "lung nodule",
}
CHEXPERT_LABELS = {
    "support_devices": "Support Devices",
    "cardiomegaly": "Cardiomegaly",
    "pleural_effusion": "Pleural Effusion",
    "pneumothorax": "Pneumothorax",
    "consolidation": "Consolidation",
    "nodule": "Lung Lesion",
}
# Kinds that are diseases (support devices are not: a study with devices only is "No Finding").
PATHOLOGIES = ("cardiomegaly", "pleural_effusion", "pneumothorax", "consolidation", "nodule")
# The yes/no questions asking whether a finding is present; the first is the plain one.
PRESENCE_QUESTIONS = {
    "pleural_effusion": (
        "Is there a pleural effusion?",
        "Is there any evidence of pleural effusion on this radiograph?",
        "Does this chest X-ray show a pleural effusion?",
        "Pick yes or no: is a pleural effusion present?",
    ),
    "pneumothorax": (
        "Is there a pneumothorax?",
        "Is there any evidence of pneumothorax on this radiograph?",
        "Does this chest X-ray show a pneumothorax?",
        "Pick yes or no: is a pneumothorax present?",
    ),
    "consolidation": (
        "Is there any consolidation?",
        "Is there any evidence of consolidation in the lungs?",
        "Does this X-ray show an area of consolidation?",
        "Pick yes or no: is there a focal consolidation?",
    ),
    "nodule": (
        "Is there a lung nodule?",
        "Does this radiograph show a pulmonary nodule?",
        "Is there any evidence of a nodule or mass in the lungs?",
        "Pick yes or no: is a lung nodule visible?",
    ),
    "cardiomegaly": (
        "Is there cardiomegaly?",
        "Is the heart enlarged?",
        "Does this X-ray show an enlarged cardiac silhouette?",
        "Pick yes or no: is there cardiomegaly?",
    ),
    "support_devices": (
        "Are there any support devices?",
        "Are any tubes or lines present on this radiograph?",
        "Does the X-ray show medical support devices such as tubes or catheters?",
        "Pick yes or no: is any support device visible?",
    ),
}
