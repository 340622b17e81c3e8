import json

import numpy as np
import pandas as pd
import pytest

from llnm3d.io import InputError
from llnm3d.phantom import RiskSpec


def spec(*terms, intercept=0.0):
    return RiskSpec.from_dict({"format": "llnm3d-risk-spec/1", "intercept": intercept,
                               "terms": list(terms)})


def table(**columns):
    base = {"x_mm": [20.0], "y_mm": [10.0], "z_mm": [0.0]}
    return pd.DataFrame({**base, **columns})


def test_step_term_uses_thresholds_inclusively():
    s = spec({"type": "step", "covariate": "capsule_distance_mm", "thresholds": [1.0, 2.5],
              "coefficients": [2.0, 1.0, -1.0]})
    values = pd.DataFrame({"capsule_distance_mm": [0.2, 1.0, 2.4, 2.5, 9.0]})
    assert np.allclose(s.logit(values), [2.0, 1.0, 1.0, -1.0, -1.0])


def test_linear_categorical_and_intercept():
    s = spec({"type": "linear", "covariate": "age_years", "coefficient": -0.1, "centre": 40},
             {"type": "categorical", "covariate": "sex", "coefficients": {"M": 0.5}},
             intercept=-1.0)
    values = pd.DataFrame({"age_years": [30, 50], "sex": ["M", "F"]})
    assert np.allclose(s.logit(values), [-1 + 1.0 + 0.5, -1 - 1.0])
    assert np.allclose(s.probability(values), 1 / (1 + np.exp(-s.logit(values))))


def test_gaussian_spot_with_mirror():
    s = spec({"type": "gaussian", "centre_mm": [20, 10, 0], "sigma_mm": 5, "coefficient": 2,
              "mirror_x": True})
    points = pd.DataFrame({"x_mm": [20.0, -20.0, 25.0], "y_mm": [10.0] * 3, "z_mm": [0.0] * 3})
    assert np.allclose(s.logit(points), [2.0, 2.0, 2 * np.exp(-0.5)])
    no_mirror = spec({"type": "gaussian", "centre_mm": [20, 10, 0], "sigma_mm": 5,
                      "coefficient": 2})
    assert no_mirror.logit(points)[1] == pytest.approx(0.0, abs=1e-6)


def test_default_spec_loads_and_is_documented():
    default = RiskSpec.default()
    assert default.data["format"] == "llnm3d-risk-spec/1"
    assert "capsule" in default.data["description"]


@pytest.mark.parametrize("data, message", [
    ([], "expected a JSON object"),
    ({"format": "other", "intercept": 0, "terms": []}, "format"),
    ({"format": "llnm3d-risk-spec/1", "intercept": "a", "terms": []}, "intercept"),
    ({"format": "llnm3d-risk-spec/1", "intercept": 0, "terms": {}}, "terms"),
    ({"format": "llnm3d-risk-spec/1", "intercept": 0, "terms": [{"type": "cubic"}]},
     "unknown type 'cubic'"),
    ({"format": "llnm3d-risk-spec/1", "intercept": 0,
      "terms": [{"type": "linear", "covariate": "height", "coefficient": 1}]},
     "unknown numeric covariate 'height'"),
    ({"format": "llnm3d-risk-spec/1", "intercept": 0,
      "terms": [{"type": "step", "covariate": "diameter_mm", "thresholds": [2, 1],
                 "coefficients": [0, 1, 2]}]}, "strictly increasing"),
    ({"format": "llnm3d-risk-spec/1", "intercept": 0,
      "terms": [{"type": "step", "covariate": "diameter_mm", "thresholds": [1, 2],
                 "coefficients": [0, 1]}]}, "one more than thresholds"),
    ({"format": "llnm3d-risk-spec/1", "intercept": 0,
      "terms": [{"type": "categorical", "covariate": "lobe_third",
                 "coefficients": {"top": 1}}]}, "unknown lobe_third levels"),
    ({"format": "llnm3d-risk-spec/1", "intercept": 0,
      "terms": [{"type": "gaussian", "centre_mm": [1, 2], "sigma_mm": 1, "coefficient": 1}]},
     "centre_mm"),
    ({"format": "llnm3d-risk-spec/1", "intercept": 0,
      "terms": [{"type": "gaussian", "centre_mm": [1, 2, 3], "sigma_mm": 0, "coefficient": 1}]},
     "sigma_mm"),
])
def test_invalid_specs_are_rejected_with_the_reason(data, message):
    with pytest.raises(InputError, match=message):
        RiskSpec.from_dict(data, source="spec.json")


def test_load_reports_bad_json_with_file_name(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text("{not json")
    with pytest.raises(InputError, match="spec.json: not valid JSON"):
        RiskSpec.load(path)
    path.write_text(json.dumps(RiskSpec.default().data))
    assert RiskSpec.load(path).data == RiskSpec.default().data
