"""Small builders shared by the tests."""

from __future__ import annotations

from pipeline.model import EmissionResult

RUN = "00000000-0000-4000-8000-000000000001"


def result_for(activity_id: int | str, kg: float = 1.5) -> EmissionResult:
    return EmissionResult(
        activity_type="electricity",
        activity_id=activity_id,
        scope=2,
        category=None,
        kg_co2e=kg,
        kg_co2=None,
        kg_ch4_co2e=None,
        kg_n2o_co2e=None,
        method="scope2_location_based",
        activity_amount=10.0,
        activity_unit="kWh",
        factor_id=1,
        factor_set="egrid_subregion",
        factor_key="CAMX",
        factor_year=2023,
        factor_value=kg / 10.0,
        factor_unit="kg CO2e/kWh",
        factor_source="test",
        factor_edition="test",
        gwp_set="AR5-100",
    )
