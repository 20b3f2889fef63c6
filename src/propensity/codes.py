"""Reference code lists (ISO 3166-1 alpha-2 countries, ISO 4217 currencies).

Kept in the library rather than a dependency: the lists change rarely, and value-set
checks must not depend on what a third-party package happens to ship.
"""

from __future__ import annotations

ISO_COUNTRIES: frozenset[str] = frozenset(
    """
AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV
BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES
ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE
IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY
MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU
NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM
SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE
VG VI VN VU WF WS YE YT ZA ZM ZW
""".split()
)

ISO_CURRENCIES: frozenset[str] = frozenset(
    """
AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BRL BSD BTN BWP BYN BZD
CAD CDF CHF CLP CNY COP CRC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD
GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR KMF KPW KRW KWD KYD KZT
LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR
NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP
STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS UAH UGX USD UYU UZS VES VND VUV WST XAF XCD XOF
XPF YER ZAR ZMW ZWL
""".split()
)

ISO_LANGUAGES: frozenset[str] = frozenset(
    "ar bg cs da de el en es et fi fr he hi hr hu id is it ja ko lt lv ms mt nl no pl pt ro ru sk sl sv th "
    "tr uk vi zh".split()
)

# Country names as they appear in real exports (e.g. UCI Online Retail) mapped to ISO codes.
COUNTRY_NAMES: dict[str, str] = {
    "australia": "AU",
    "austria": "AT",
    "bahrain": "BH",
    "belgium": "BE",
    "brazil": "BR",
    "canada": "CA",
    "channel islands": "JE",
    "cyprus": "CY",
    "czech republic": "CZ",
    "denmark": "DK",
    "eire": "IE",
    "ireland": "IE",
    "finland": "FI",
    "france": "FR",
    "germany": "DE",
    "greece": "GR",
    "hong kong": "HK",
    "iceland": "IS",
    "israel": "IL",
    "italy": "IT",
    "japan": "JP",
    "lebanon": "LB",
    "lithuania": "LT",
    "malta": "MT",
    "netherlands": "NL",
    "norway": "NO",
    "poland": "PL",
    "portugal": "PT",
    "rsa": "ZA",
    "south africa": "ZA",
    "saudi arabia": "SA",
    "singapore": "SG",
    "spain": "ES",
    "sweden": "SE",
    "switzerland": "CH",
    "united arab emirates": "AE",
    "usa": "US",
    "united states": "US",
    "united kingdom": "GB",
    "uk": "GB",
    "china": "CN",
    "korea": "KR",
}


def country_code(name: str | None) -> str | None:
    """ISO code for a country code or name; None when the name is unknown (e.g. 'Unspecified')."""
    if name is None:
        return None
    text = str(name).strip()
    if text.upper() in ISO_COUNTRIES:
        return text.upper()
    return COUNTRY_NAMES.get(text.lower())
