"""Generate the Thái Nguyên-like procedure catalogue and province profile (not used at runtime).

    python -m dossier.tools.generate_catalogue [--seed 2022]

Writes, deterministically:

- `workflows/catalogue/thai-nguyen.csv`: the province's procedure list as a province would
  export it, one row per procedure version, matching the seed report (2022): 1,231
  procedures, 1,072 decided at province level, 115 at district level, 44 at commune level, all
  offered online at level 4, among them the contract's three reference procedures;
- `workflows/procedures/thai-nguyen.yaml`: that CSV through `dossier workflows import`
  (the reference procedures are skipped there: `reference.yaml` defines them), and the same
  import's `workflows/migrations/thai-nguyen.yaml`, the plans that move the open dossiers of
  the versions ending 2025-06-30 to their successors;
- `workflows/provinces/thai-nguyen.yaml`: the province's registry of agencies and senders
  (contract 1.1, read by `engine.registry`: levels, parents, windows, successors, sources, the
  systems that write `dossier.submission`) and what the workload simulator needs to play the
  province: which department decides which procedure, and each procedure's share of the
  dossiers;
- `dossier/tools/simulation_registry.yaml` and `dossier/tools/simulation_keys.yaml`: TEST-ONLY
  Ed25519 keys of a few of the simulated province's systems (public keys as an extra registry
  file, private keys for the simulator), derived from the seed: never real keys.

District-level procedures end on 2025-06-30 (two-tier local government from 1 July 2025);
most get a successor version from 2025-07-01 at commune level, some at province level, and a
few are abolished. Procedure names are plausible, codes synthetic, agency names illustrative.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from dossier.tools.catalogue_import import import_catalogue
from engine.procedures import default_workflows_dir, load_catalogue

CENSUS = date(2022, 10, 1)  # when the seed report counted the procedures
START = date(2021, 1, 1)
LAST_THREE_TIER_DAY = date(2025, 6, 30)
TWO_TIER_FROM = date(2025, 7, 1)
COUNTS = {"province": 1072, "district": 115, "commune": 44}
CSV_COLUMNS = (
    "code",
    "name",
    "levels",
    "working_days",
    "per_level_days",
    "effective_from",
    "effective_to",
    "fees",
    "online_level",
    "discount_percent",
    "discount_condition",
    "discount_from",
    "discount_to",
    "legal_basis",
)
# Thái Nguyên's reduction for the level-4 (full online) service; the seed report cites it.
PROVINCE_DISCOUNT_BASIS = (
    "Giảm 50% phí, lệ phí khi thực hiện dịch vụ công trực tuyến toàn trình "
    "(Nghị quyết của HĐND tỉnh Thái Nguyên về chính sách hỗ trợ dịch vụ công trực tuyến)"
)
# Dossiers per month, province-wide, by the level that decides (the rest follows a Zipf law).
MONTHLY_DOSSIERS = {"commune": 36_000, "district": 11_000, "province": 13_000}


@dataclass
class Row:
    code: str
    name: str
    levels: str
    working_days: str
    effective_from: date = START
    effective_to: date | None = None
    per_level_days: str = ""
    fees: str = ""
    discount_percent: str = ""
    discount_condition: str = ""
    discount_from: date | None = None
    discount_to: date | None = None
    legal_basis: str = ""

    def cells(self) -> list[str]:
        def day(d: date | None) -> str:
            return d.isoformat() if d else ""

        return [
            self.code,
            self.name,
            self.levels,
            self.working_days,
            self.per_level_days,
            day(self.effective_from),
            day(self.effective_to),
            self.fees,
            "4",
            self.discount_percent,
            self.discount_condition,
            day(self.discount_from),
            day(self.discount_to),
            self.legal_basis,
        ]


REFERENCE_ROWS = (
    Row("1.001193", "Đăng ký khai sinh", "commune", "1"),
    Row(
        "1.004222",
        "Đăng ký thường trú",
        "commune",
        "7",
        fees="LP-CT:20000:Lệ phí đăng ký cư trú",
        discount_percent="50",
        discount_condition="online",
        discount_from=date(2022, 1, 1),
        discount_to=date(2025, 12, 31),
        legal_basis=(
            "Mức thu lệ phí đăng ký cư trú giảm 50% khi nộp hồ sơ trực tuyến (Thông tư "
            "75/2022/TT-BTC; áp dụng cho hồ sơ nộp từ 01/01/2022 đến 31/12/2025)"
        ),
    ),
    Row(
        "DD.GCN.LD",
        "Cấp Giấy chứng nhận quyền sử dụng đất lần đầu",
        "commune>district",
        "30",
        effective_to=LAST_THREE_TIER_DAY,
        per_level_days="commune:5;district:25",
        fees="LP-GCN:100000:Lệ phí cấp Giấy chứng nhận",
        discount_percent="50",
        discount_condition="full-online",
        discount_from=START,
        legal_basis=PROVINCE_DISCOUNT_BASIS,
    ),
    Row(
        "DD.GCN.LD",
        "Cấp Giấy chứng nhận quyền sử dụng đất lần đầu",
        "commune>province",
        "30",
        effective_from=TWO_TIER_FROM,
        per_level_days="commune:5;province:25",
        fees="LP-GCN:100000:Lệ phí cấp Giấy chứng nhận",
        discount_percent="50",
        discount_condition="full-online",
        discount_from=START,
        legal_basis=PROVINCE_DISCOUNT_BASIS,
    ),
)

# --- Names ---------------------------------------------------------------------------------
# (department, verbs, objects): names are "<verb> <object>"; departments decide the province
# procedures of their field.
VERBS_PERMIT = ("Cấp", "Cấp lại", "Cấp đổi", "Gia hạn", "Điều chỉnh", "Thu hồi")
VERBS_REGISTER = ("Đăng ký", "Đăng ký thay đổi", "Xác nhận", "Chấm dứt")
VERBS_APPROVE = ("Thẩm định", "Phê duyệt", "Công nhận", "Điều chỉnh")
PROVINCE_FIELDS: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    (
        "Sở Tư pháp",
        VERBS_PERMIT,
        (
            "Thẻ công chứng viên",
            "Giấy đăng ký hoạt động văn phòng công chứng",
            "Chứng chỉ hành nghề đấu giá",
            "Giấy đăng ký hoạt động tổ chức hành nghề luật sư",
            "Phiếu lý lịch tư pháp",
            "Giấy đăng ký hoạt động trung tâm trọng tài",
            "Thẻ giám định viên tư pháp",
            "Giấy đăng ký hoạt động văn phòng thừa phát lại",
        ),
    ),
    (
        "Sở Kế hoạch và Đầu tư",
        VERBS_REGISTER,
        (
            "doanh nghiệp tư nhân",
            "công ty trách nhiệm hữu hạn một thành viên",
            "công ty cổ phần",
            "chi nhánh, văn phòng đại diện",
            "dự án đầu tư ngoài khu công nghiệp",
            "hợp tác xã",
            "liên hiệp hợp tác xã",
            "địa điểm kinh doanh",
        ),
    ),
    (
        "Sở Tài nguyên và Môi trường",
        VERBS_PERMIT,
        (
            "Giấy phép môi trường",
            "Giấy phép khai thác nước mặt",
            "Giấy phép khai thác khoáng sản",
            "Giấy phép thăm dò khoáng sản",
            "Giấy phép xả nước thải vào nguồn nước",
            "Giấy phép hành nghề khoan nước dưới đất",
            "Giấy chứng nhận quyền sử dụng đất cho tổ chức",
            "Giấy phép thăm dò nước dưới đất",
        ),
    ),
    (
        "Sở Xây dựng",
        VERBS_PERMIT,
        (
            "Giấy phép xây dựng công trình cấp II",
            "Chứng chỉ hành nghề hoạt động xây dựng",
            "Chứng chỉ năng lực hoạt động xây dựng",
            "Giấy phép di dời công trình",
            "Giấy phép hoạt động xây dựng cho nhà thầu nước ngoài",
            "Giấy phép sửa chữa, cải tạo công trình",
            "Chứng chỉ môi giới bất động sản",
            "Giấy phép xây dựng có thời hạn",
        ),
    ),
    (
        "Sở Giao thông vận tải",
        VERBS_PERMIT,
        (
            "Giấy phép lái xe",
            "Giấy phép kinh doanh vận tải bằng xe ô tô",
            "Phù hiệu xe ô tô kinh doanh vận tải",
            "Giấy phép thi công công trình đường bộ",
            "Giấy phép lưu hành xe quá tải trọng",
            "Giấy chứng nhận đăng ký phương tiện thủy nội địa",
            "Giấy phép đào tạo lái xe",
            "Giấy phép hoạt động bến thủy nội địa",
        ),
    ),
    (
        "Sở Y tế",
        VERBS_PERMIT,
        (
            "Chứng chỉ hành nghề khám bệnh, chữa bệnh",
            "Giấy phép hoạt động phòng khám đa khoa",
            "Chứng chỉ hành nghề dược",
            "Giấy chứng nhận đủ điều kiện kinh doanh dược",
            "Giấy chứng nhận cơ sở đủ điều kiện an toàn thực phẩm",
            "Giấy phép hoạt động cơ sở dịch vụ thẩm mỹ",
            "Giấy chứng nhận thực hành tốt phân phối thuốc",
            "Giấy phép hoạt động phòng xét nghiệm",
        ),
    ),
    (
        "Sở Giáo dục và Đào tạo",
        VERBS_APPROVE,
        (
            "trường trung học phổ thông tư thục",
            "trung tâm ngoại ngữ, tin học",
            "hoạt động dạy thêm, học thêm",
            "văn bằng, chứng chỉ",
            "trường đạt chuẩn quốc gia",
            "liên kết giáo dục với nước ngoài",
            "trung tâm giáo dục kỹ năng sống",
            "kết quả kiểm định chất lượng giáo dục",
        ),
    ),
    (
        "Sở Lao động - Thương binh và Xã hội",
        VERBS_APPROVE,
        (
            "chế độ người có công với cách mạng",
            "Giấy phép lao động cho người nước ngoài",
            "cơ sở trợ giúp xã hội ngoài công lập",
            "chế độ trợ cấp thất nghiệp",
            "Giấy phép hoạt động dịch vụ việc làm",
            "Giấy phép cho thuê lại lao động",
            "cơ sở giáo dục nghề nghiệp",
            "chế độ điều dưỡng người có công",
        ),
    ),
    (
        "Sở Công Thương",
        VERBS_PERMIT,
        (
            "Giấy phép hoạt động điện lực",
            "Giấy chứng nhận đủ điều kiện cửa hàng bán lẻ xăng dầu",
            "Giấy phép sản xuất rượu công nghiệp",
            "Giấy phép bán buôn sản phẩm thuốc lá",
            "Giấy chứng nhận đủ điều kiện kinh doanh khí",
            "Giấy phép kinh doanh hàng hóa cho tổ chức nước ngoài",
            "Giấy phép sử dụng vật liệu nổ công nghiệp",
            "Giấy phép tổ chức hội chợ, triển lãm thương mại",
        ),
    ),
    (
        "Sở Nông nghiệp và Phát triển nông thôn",
        VERBS_PERMIT,
        (
            "Giấy chứng nhận đủ điều kiện buôn bán thuốc bảo vệ thực vật",
            "Giấy chứng nhận đủ điều kiện sản xuất thức ăn chăn nuôi",
            "Chứng chỉ hành nghề thú y",
            "Giấy chứng nhận cơ sở an toàn dịch bệnh động vật",
            "Giấy phép khai thác lâm sản",
            "Giấy phép hoạt động trong phạm vi bảo vệ công trình thủy lợi",
            "Giấy chứng nhận vùng trồng",
            "Giấy chứng nhận đủ điều kiện buôn bán phân bón",
        ),
    ),
    (
        "Sở Văn hóa, Thể thao và Du lịch",
        VERBS_PERMIT,
        (
            "Giấy phép kinh doanh dịch vụ lữ hành nội địa",
            "Thẻ hướng dẫn viên du lịch",
            "Giấy chứng nhận đủ điều kiện kinh doanh hoạt động thể thao",
            "Giấy phép tổ chức biểu diễn nghệ thuật",
            "Giấy phép xây dựng tượng đài, tranh hoành tráng",
            "Giấy phép thành lập bảo tàng ngoài công lập",
            "Giấy phép triển lãm mỹ thuật",
            "Quyết định công nhận cơ sở lưu trú du lịch",
        ),
    ),
    (
        "Sở Nội vụ",
        VERBS_APPROVE,
        (
            "điều lệ hội",
            "thành lập quỹ xã hội, quỹ từ thiện",
            "danh hiệu thi đua",
            "đăng ký hoạt động tôn giáo",
            "hồ sơ xếp hạng đơn vị sự nghiệp",
            "tổ chức tôn giáo trực thuộc",
            "hình thức khen thưởng",
            "cấp chứng chỉ lưu trữ",
        ),
    ),
    (
        "Sở Tài chính",
        VERBS_APPROVE,
        (
            "giá đất cụ thể",
            "phương án giá tài sản công",
            "mã số đơn vị có quan hệ với ngân sách",
            "quyết toán dự án hoàn thành",
            "phương án sắp xếp nhà, đất",
            "tiêu chuẩn, định mức xe chuyên dùng",
            "dự toán mua sắm tài sản",
            "đề án sử dụng tài sản công",
        ),
    ),
    (
        "Sở Thông tin và Truyền thông",
        VERBS_PERMIT,
        (
            "Giấy phép xuất bản bản tin",
            "Giấy phép hoạt động in",
            "Giấy phép thiết lập trang thông tin điện tử tổng hợp",
            "Giấy phép nhập khẩu xuất bản phẩm",
            "Giấy phép cung cấp dịch vụ trò chơi điện tử G1",
            "Giấy phép tổ chức triển lãm xuất bản phẩm",
            "Giấy xác nhận đăng ký hoạt động phát hành xuất bản phẩm",
            "Giấy phép hoạt động điểm cung cấp dịch vụ trò chơi điện tử",
        ),
    ),
    (
        "Sở Khoa học và Công nghệ",
        VERBS_PERMIT,
        (
            "Giấy chứng nhận đăng ký hoạt động khoa học và công nghệ",
            "Giấy phép tiến hành công việc bức xạ",
            "Chứng chỉ nhân viên bức xạ",
            "Giấy chứng nhận doanh nghiệp khoa học và công nghệ",
            "Giấy chứng nhận đăng ký chuyển giao công nghệ",
            "Giấy chứng nhận đăng ký kết quả nhiệm vụ khoa học",
            "Giấy xác nhận đăng ký hoạt động tiêu chuẩn đo lường",
            "Quyết định chỉ định tổ chức thử nghiệm",
        ),
    ),
    (
        "Ban Quản lý các Khu công nghiệp",
        VERBS_REGISTER,
        (
            "dự án đầu tư trong khu công nghiệp",
            "nội quy lao động của doanh nghiệp trong khu công nghiệp",
            "thang lương, bảng lương trong khu công nghiệp",
            "giấy phép lao động trong khu công nghiệp",
            "hợp đồng gia công với thương nhân nước ngoài",
            "văn phòng điều hành của nhà đầu tư nước ngoài",
            "giấy chứng nhận xuất xứ hàng hóa",
            "kế hoạch bảo vệ môi trường trong khu công nghiệp",
        ),
    ),
)
# District-level fields: (successor level from 1 July 2025 or None, verbs, objects).
DISTRICT_FIELDS: tuple[tuple[str | None, tuple[str, ...], tuple[str, ...]], ...] = (
    (
        "commune",
        VERBS_REGISTER,
        (
            "hộ kinh doanh",
            "thay đổi, cải chính hộ tịch cho người từ đủ 14 tuổi",
            "kết hôn có yếu tố nước ngoài",
            "khai sinh có yếu tố nước ngoài",
            "khai tử có yếu tố nước ngoài",
            "giám hộ có yếu tố nước ngoài",
            "kế hoạch bảo vệ môi trường",
            "nhận cha, mẹ, con có yếu tố nước ngoài",
        ),
    ),
    (
        "commune",
        VERBS_PERMIT,
        (
            "Giấy phép xây dựng nhà ở riêng lẻ",
            "Giấy phép bán lẻ rượu",
            "Giấy phép bán lẻ sản phẩm thuốc lá",
            "Giấy chứng nhận đủ điều kiện an toàn thực phẩm cơ sở nhỏ lẻ",
            "Giấy phép sửa chữa, cải tạo nhà ở riêng lẻ",
        ),
    ),
    (
        "commune",
        VERBS_APPROVE,
        (
            "trợ cấp xã hội hằng tháng",
            "hỗ trợ chi phí mai táng",
            "trường mầm non tư thục",
            "tổ hợp tác",
            "thôn, tổ dân phố văn hóa",
            "hộ nghèo theo chuẩn nghèo đa chiều",
            "chế độ cho trẻ em có hoàn cảnh đặc biệt",
        ),
    ),
    (
        "province",
        VERBS_PERMIT,
        (
            "Giấy phép kinh doanh dịch vụ karaoke",
            "Giấy phép kinh doanh dịch vụ vũ trường",
            "Giấy phép khai thác cát, sỏi lòng sông",
        ),
    ),
    (
        None,
        VERBS_APPROVE,
        ("danh hiệu gia đình văn hóa cấp huyện", "hồ sơ nâng hạng đơn vị hành chính cấp huyện"),
    ),
)
COMMUNE_NAMES = (
    "Đăng ký kết hôn",
    "Đăng ký khai tử",
    "Đăng ký nhận cha, mẹ, con",
    "Đăng ký giám hộ",
    "Đăng ký chấm dứt giám hộ",
    "Đăng ký thay đổi, cải chính, bổ sung thông tin hộ tịch",
    "Đăng ký lại khai sinh",
    "Đăng ký lại kết hôn",
    "Đăng ký lại khai tử",
    "Cấp Giấy xác nhận tình trạng hôn nhân",
    "Cấp bản sao trích lục hộ tịch",
    "Đăng ký khai sinh kết hợp nhận cha, mẹ, con",
    "Liên thông đăng ký khai sinh, thường trú, cấp thẻ bảo hiểm y tế cho trẻ em dưới 6 tuổi",
    "Liên thông đăng ký khai tử, xóa đăng ký thường trú, hưởng chế độ tử tuất",
    "Chứng thực bản sao từ bản chính",
    "Chứng thực chữ ký trong giấy tờ, văn bản",
    "Chứng thực hợp đồng, giao dịch liên quan đến tài sản là động sản",
    "Chứng thực di chúc",
    "Chứng thực văn bản thỏa thuận phân chia di sản",
    "Chứng thực việc sửa đổi, bổ sung, hủy bỏ hợp đồng, giao dịch",
    "Đăng ký tạm trú",
    "Gia hạn tạm trú",
    "Xóa đăng ký thường trú",
    "Khai báo tạm vắng",
    "Thông báo lưu trú",
    "Tách hộ",
    "Điều chỉnh thông tin trong Cơ sở dữ liệu về cư trú",
    "Xác nhận thông tin về cư trú",
    "Hòa giải tranh chấp đất đai",
    "Xác nhận hợp đồng tiếp cận nguồn gen",
    "Thực hiện, điều chỉnh, thôi hưởng trợ cấp xã hội hằng tháng",
    "Hỗ trợ chi phí mai táng cho đối tượng bảo trợ xã hội",
    "Đăng ký hoạt động tín ngưỡng",
    "Đăng ký sinh hoạt tôn giáo tập trung",
    "Công nhận hộ nghèo, hộ cận nghèo phát sinh trong năm",
    "Xét tặng danh hiệu Gia đình văn hóa",
    "Thủ tục công nhận tổ trưởng tổ dân phố",
    "Xác nhận đơn đề nghị hỗ trợ nhà ở cho người có công",
    "Cấp giấy phép đào đường nội bộ thôn, xóm",
    "Đăng ký kê khai số lượng chăn nuôi tập trung",
    "Thông báo tổ chức lễ hội cấp xã",
    "Xác nhận lý lịch cho học sinh, sinh viên",
)
INTER_PROVINCE_NAMES = (
    "Cấp Giấy chứng nhận quyền sử dụng đất, quyền sở hữu nhà ở",
    "Đăng ký biến động quyền sử dụng đất",
    "Chuyển mục đích sử dụng đất",
    "Giải quyết chế độ trợ cấp thờ cúng liệt sĩ",
    "Cấp thẻ bảo hiểm y tế cho người có công",
    "Giải quyết chế độ mai táng phí cựu chiến binh",
    "Cấp Giấy phép khai thác tài nguyên nước quy mô nhỏ",
    "Đề nghị hỗ trợ phát triển sản xuất nông nghiệp",
    "Tách thửa, hợp thửa đất",
    "Gia hạn sử dụng đất ngoài khu công nghệ cao",
)
INTER_VARIANTS = (
    "",
    " đối với hộ gia đình, cá nhân",
    " đối với tổ chức",
    " trường hợp ủy quyền",
    " trường hợp có thay đổi diện tích",
    " cho người Việt Nam định cư ở nước ngoài",
    " trường hợp thừa kế",
)
INTER_DEPARTMENTS = (
    "Sở Tài nguyên và Môi trường",
    "Sở Lao động - Thương binh và Xã hội",
    "Sở Nông nghiệp và Phát triển nông thôn",
)
INTER_DISTRICT_NAMES = (
    "Đăng ký biến động đất đai do chuyển nhượng (liên thông)",
    "Cấp đổi Giấy chứng nhận quyền sử dụng đất (liên thông)",
    "Đính chính Giấy chứng nhận đã cấp (liên thông)",
    "Thu hồi đất do người sử dụng đất tự nguyện trả lại (liên thông)",
    "Giải quyết tranh chấp đất đai cấp huyện (liên thông)",
    "Xác nhận tiếp tục sử dụng đất nông nghiệp (liên thông)",
    "Cấp Giấy chứng nhận cho người nhận chuyển nhượng (liên thông)",
    "Trợ cấp một lần cho người có công (liên thông)",
)


# --- Agencies --------------------------------------------------------------------------------
DISTRICTS: tuple[tuple[str, float, tuple[str, ...]], ...] = (
    (
        "TP Thái Nguyên",
        3.0,
        (
            "phường Hoàng Văn Thụ",
            "phường Phan Đình Phùng",
            "phường Quang Trung",
            "phường Trưng Vương",
            "phường Túc Duyên",
            "phường Gia Sàng",
            "phường Tân Thịnh",
            "phường Thịnh Đán",
            "phường Đồng Quang",
            "phường Tân Lập",
            "xã Quyết Thắng",
            "xã Phúc Xuân",
        ),
    ),
    (
        "TP Sông Công",
        1.2,
        ("phường Thắng Lợi", "phường Mỏ Chè", "phường Phố Cò", "phường Cải Đan", "xã Bình Sơn"),
    ),
    (
        "TP Phổ Yên",
        1.6,
        (
            "phường Ba Hàng",
            "phường Bãi Bông",
            "phường Đồng Tiến",
            "phường Bắc Sơn",
            "xã Minh Đức",
            "xã Phúc Thuận",
        ),
    ),
    (
        "huyện Đại Từ",
        1.5,
        (
            "thị trấn Hùng Sơn",
            "thị trấn Quân Chu",
            "xã La Bằng",
            "xã Ký Phú",
            "xã Phú Xuyên",
            "xã Bản Ngoại",
            "xã Tiên Hội",
        ),
    ),
    (
        "huyện Định Hóa",
        0.8,
        ("thị trấn Chợ Chu", "xã Phú Đình", "xã Bảo Linh", "xã Kim Phượng", "xã Tân Dương"),
    ),
    (
        "huyện Phú Lương",
        0.9,
        ("thị trấn Đu", "thị trấn Giang Tiên", "xã Yên Lạc", "xã Động Đạt", "xã Phấn Mễ"),
    ),
    (
        "huyện Đồng Hỷ",
        0.9,
        (
            "thị trấn Trại Cau",
            "thị trấn Sông Cầu",
            "xã Hóa Thượng",
            "xã Hóa Trung",
            "xã Minh Lập",
            "xã Khe Mo",
        ),
    ),
    (
        "huyện Võ Nhai",
        0.6,
        ("thị trấn Đình Cả", "xã La Hiên", "xã Tràng Xá", "xã Dân Tiến", "xã Thần Sa"),
    ),
    (
        "huyện Phú Bình",
        1.1,
        (
            "thị trấn Hương Sơn",
            "xã Điềm Thụy",
            "xã Kha Sơn",
            "xã Tân Đức",
            "xã Úc Kỳ",
            "xã Nga My",
            "xã Thanh Ninh",
        ),
    ),
)


@dataclass
class Agency:
    code: str
    name: str
    level: str
    weight: float = 1.0
    parent: str | None = None
    effective_to: date | None = None
    successor: str | None = None
    successor_by_level: dict[str, str] = field(default_factory=dict)
    successor_basis: str | None = None
    procedures: list[str] = field(default_factory=list)

    @property
    def source(self) -> str:
        return f"urn:vn:agency:{self.code}"


# The first code of the province departments: 000.00.40.H56 on. The contract's examples and the
# test fixtures use 000.00.00.H56, 000.00.12.H56 and 000.00.19.H56 as agencies of other levels;
# the synthetic province keeps clear of them so that both can be registered side by side.
FIRST_DEPARTMENT = 40
# The department that decides the former district procedures from 1 July 2025 (land, as
# DD.GCN.LD): the successor of every district in this synthetic province.
DISTRICT_SUCCESSOR_DEPARTMENT = "Sở Tài nguyên và Môi trường"
SUCCESSOR_BASIS = (
    "illustrative: the district level ends on 2025-06-30 (Law on the Organisation of Local "
    "Government 2025, two-tier local government from 2025-07-01); which agency takes over a "
    "district's open dossiers is the province's decision, here the department that decides the "
    "former district procedures from 2025-07-01, and a dossier whose step is a commune's from "
    "then (a procedure moved down) the first-listed commune of the district"
)


def department_code(name: str) -> str:
    index = [n for n, *_ in PROVINCE_FIELDS].index(name)
    return f"000.00.{FIRST_DEPARTMENT + index:02d}.H56"


def agencies() -> list[Agency]:
    """Agency codes in the Decision 20/2020 shape (synthetic)."""
    result: list[Agency] = []
    for name, *_rest in PROVINCE_FIELDS:
        result.append(Agency(department_code(name), name, "province"))
    successor = department_code(DISTRICT_SUCCESSOR_DEPARTMENT)
    commune_index = 0
    for i, (district, weight, communes) in enumerate(DISTRICTS):
        code = f"000.00.{30 + i}.H56"
        first_commune = f"000.{20 + commune_index // 90:02d}.{commune_index % 90 + 10:02d}.H56"
        result.append(
            Agency(
                code,
                f"UBND {district}",
                "district",
                weight,
                effective_to=LAST_THREE_TIER_DAY,
                successor=successor,
                successor_by_level={"commune": first_commune},
                successor_basis=SUCCESSOR_BASIS,
            )
        )
        for commune in communes:
            urban = commune.startswith("phường")
            town = commune.startswith("thị trấn")
            share = 1.6 if urban else (1.1 if town else 0.7)
            result.append(
                Agency(
                    f"000.{20 + commune_index // 90:02d}.{commune_index % 90 + 10:02d}.H56",
                    f"UBND {commune}",
                    "commune",
                    share,
                    parent=code,
                )
            )
            commune_index += 1
    return result


# --- Catalogue -------------------------------------------------------------------------------


class Codes:
    """Unique synthetic national procedure codes, never a reference one."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used = {r.code for r in REFERENCE_ROWS}

    def new(self) -> str:
        while True:
            code = f"{self.rng.choice('12')}.{self.rng.randrange(1000, 13000):06d}"
            if code not in self.used:
                self.used.add(code)
                return code


NAME_VARIANTS = ("", " (đối với tổ chức)", " (đối với cá nhân)")


def _names(fields: Sequence[tuple[object, tuple[str, ...], tuple[str, ...]]]) -> list[str]:
    return [f"{verb} {obj}" for _, verbs, objects in fields for obj in objects for verb in verbs]


def _fees(rng: random.Random, level: str, code: str) -> str:
    share = {"commune": 0.2, "district": 0.35, "province": 0.4}[level]
    if rng.random() >= share:
        return ""
    low, high = {"commune": (1, 10), "district": (5, 50), "province": (10, 200)}[level]
    amount = rng.randint(low, high) * 5_000
    kind = rng.choice(("LP", "PHI"))
    return f"{kind}-{code.replace('.', '')}:{amount}"


def _days(rng: random.Random, level: str) -> str:
    choices = {
        "commune": (0.5, 1, 1, 2, 3, 3, 5, 5, 7, 10, 15),
        "district": (3, 5, 7, 10, 10, 15, 15, 20, 30),
        "province": (3, 5, 5, 7, 10, 10, 15, 15, 20, 20, 30, 45),
    }[level]
    return format(rng.choice(choices), "g")


def _with_discount(rng: random.Random, row: Row) -> Row:
    """Most fee-bearing procedures take the province's 50% full-online reduction."""
    if row.fees and rng.random() < 0.85:
        row.discount_percent = "50"
        row.discount_condition = "full-online"
        row.discount_from = date(2022, 1, 1)
        row.discount_to = date(2025, 12, 31)
        row.legal_basis = PROVINCE_DISCOUNT_BASIS
    return row


def _split(days: str, receiving: str, upper: str) -> str:
    total = float(days)
    first = max(1, round(total * 0.2)) if total >= 3 else total / 2
    return f"{receiving}:{format(first, 'g')};{upper}:{format(total - first, 'g')}"


@dataclass
class Catalogue:
    rows: list[Row]
    departments: dict[str, list[str]]  # department name -> province procedure codes
    monthly: dict[str, float]  # code -> dossiers per month


def generate(seed: int) -> Catalogue:
    rng = random.Random(seed)
    codes = Codes(rng)
    rows: list[Row] = list(REFERENCE_ROWS)
    departments: dict[str, list[str]] = {name: [] for name, *_ in PROVINCE_FIELDS}
    departments["Sở Tài nguyên và Môi trường"].append("DD.GCN.LD")
    level_of = {"1.001193": "commune", "1.004222": "commune", "DD.GCN.LD": "district"}

    def add(row: Row, level: str) -> None:
        level_of[row.code] = level
        rows.append(row)

    def successor(row: Row, levels: str, per_level_days: str = "") -> Row:
        return Row(
            row.code,
            row.name,
            levels,
            row.working_days,
            TWO_TIER_FROM,
            per_level_days=per_level_days,
            fees=row.fees,
            discount_percent=row.discount_percent,
            discount_condition=row.discount_condition,
            discount_from=row.discount_from,
            discount_to=row.discount_to,
            legal_basis=row.legal_basis,
        )

    # Commune level: all of them stay commune procedures after 1 July 2025.
    commune_names = list(COMMUNE_NAMES)
    rng.shuffle(commune_names)
    for name in commune_names[: COUNTS["commune"] - 2]:
        code = codes.new()
        row = Row(code, name, "commune", _days(rng, "commune"), fees=_fees(rng, "commune", code))
        add(_with_discount(rng, row), "commune")

    # District level, inter-level: received at the commune, decided by the district until
    # 30 June 2025, by the province from 1 July 2025 (as DD.GCN.LD).
    for name in INTER_DISTRICT_NAMES:
        code = codes.new()
        days = rng.choice(("10", "15", "20", "30"))
        fees = _fees(rng, "district", code)
        split = _split(days, "commune", "district")
        first = Row(code, name, "commune>district", days, START, LAST_THREE_TIER_DAY, split, fees)
        add(_with_discount(rng, first), "district")
        rows.append(successor(first, "commune>province", _split(days, "commune", "province")))
        departments["Sở Tài nguyên và Môi trường"].append(code)

    # District level, single-level: most go to the (larger) communes, some up to the
    # province, a few are abolished.
    pool = [
        (after, f"{verb} {obj}")
        for after, verbs, objects in DISTRICT_FIELDS
        for obj in objects
        for verb in verbs
    ]
    rng.shuffle(pool)
    for after, name in pool[: COUNTS["district"] - 1 - len(INTER_DISTRICT_NAMES)]:
        code = codes.new()
        days = _days(rng, "district")
        first = Row(
            code,
            name,
            "district",
            days,
            START,
            LAST_THREE_TIER_DAY,
            fees=_fees(rng, "district", code),
        )
        add(_with_discount(rng, first), "district")
        if after is not None:
            rows.append(successor(first, after))
        if after == "province":
            departments[rng.choice(list(departments))].append(code)

    # Province level: single-level; inter-level received at the district until 30 June 2025
    # (then at the commune); inter-level received at the commune throughout.
    base = _names(PROVINCE_FIELDS)
    rng.shuffle(base)
    variants = [f"{name}{v}" for v in NAME_VARIANTS[1:] for name in base]
    rng.shuffle(variants)
    department_of = {
        f"{verb} {obj}{v}": dept
        for dept, verbs, objects in PROVINCE_FIELDS
        for obj in objects
        for verb in verbs
        for v in NAME_VARIANTS
    }
    n_district_province, n_commune_province = 40, 30
    n_single = COUNTS["province"] - n_district_province - n_commune_province
    for name in (base + variants)[:n_single]:
        code = codes.new()
        row = Row(code, name, "province", _days(rng, "province"), fees=_fees(rng, "province", code))
        add(_with_discount(rng, row), "province")
        departments[department_of[name]].append(code)
    inter = [f"{name}{v}" for v in INTER_VARIANTS for name in INTER_PROVINCE_NAMES]
    for i, name in enumerate(inter[: n_district_province + n_commune_province]):
        code = codes.new()
        days = rng.choice(("10", "15", "20", "30", "45"))
        fees = _fees(rng, "province", code)
        departments[rng.choice(INTER_DEPARTMENTS)].append(code)
        if i < n_district_province:
            split = _split(days, "district", "province")
            first = Row(
                code, name, "district>province", days, START, LAST_THREE_TIER_DAY, split, fees
            )
            add(_with_discount(rng, first), "province")
            rows.append(successor(first, "commune>province", _split(days, "commune", "province")))
        else:
            split = _split(days, "commune", "province")
            row = Row(code, name, "commune>province", days, per_level_days=split, fees=fees)
            add(_with_discount(rng, row), "province")
    return Catalogue(rows, departments, _monthly(rng, level_of, rows))


# Procedures everyone knows are the busy ones: (name, rank within its level).
FAVOURITES = {
    "Chứng thực bản sao từ bản chính": 0,
    "Chứng thực chữ ký trong giấy tờ, văn bản": 1,
    "Đăng ký thường trú": 2,
    "Đăng ký tạm trú": 3,
    "Đăng ký khai sinh": 4,
    "Đăng ký hộ kinh doanh": 0,
    "Cấp Giấy phép xây dựng nhà ở riêng lẻ": 1,
    "Cấp Giấy chứng nhận quyền sử dụng đất lần đầu": 2,
    "Cấp đổi Giấy phép lái xe": 0,
    "Cấp Phiếu lý lịch tư pháp": 1,
    "Đăng ký công ty trách nhiệm hữu hạn một thành viên": 2,
}


def _monthly(rng: random.Random, level_of: dict[str, str], rows: Sequence[Row]) -> dict[str, float]:
    """Dossiers per month by procedure: a few procedures carry most of a level's work (Zipf)."""
    favourites = {row.code: FAVOURITES[row.name] for row in rows if row.name in FAVOURITES}
    monthly: dict[str, float] = {}
    for level, total in MONTHLY_DOSSIERS.items():
        codes = sorted(c for c, lvl in level_of.items() if lvl == level)
        rng.shuffle(codes)
        ranked = sorted((c for c in codes if c in favourites), key=lambda c: favourites[c])
        for code in ranked:
            codes.remove(code)
            codes.insert(favourites[code], code)
        weights = [1 / (rank + 1) ** 1.1 for rank in range(len(codes))]
        scale = total / sum(weights)
        for code, weight in zip(codes, weights, strict=True):
            monthly[code] = round(weight * scale, 2)
    return monthly


# --- Output ------------------------------------------------------------------------------------


def render_csv(rows: Sequence[Row]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in sorted(rows, key=lambda r: (r.code, r.effective_from)):
        writer.writerow(row.cells())
    return buffer.getvalue()


PORTAL = "urn:vn:portal:dichvucong.gov.vn"
# The simulator's sender of dossier.submission traffic (dossier.tools.simulation.PORTAL).
PROVINCIAL_PORTAL = "urn:vn:portal:dichvucong.thainguyen.gov.vn"
SUBMISSION_TYPES = ("submitted", "supplement-provided", "payment-completed", "withdrawal-requested")


@dataclass(frozen=True)
class SenderSpec:
    source: str
    name: str
    types: tuple[str, ...]
    agencies: tuple[str, ...] | None  # None: any agency ("*")


def senders() -> list[SenderSpec]:
    """The systems that write `dossier.submission` (contract 1.1): the national and provincial
    portals, the payment platform, the postal service and the reception counters (the
    province's public administration service centre for the departments, each district's and
    commune's one-stop counter for itself). The provincial portal is the simulator's sender."""
    every = agencies()
    departments = tuple(a.code for a in every if a.level == "province")
    result = [
        SenderSpec(PORTAL, "Cổng Dịch vụ công quốc gia", SUBMISSION_TYPES, None),
        SenderSpec(
            PROVINCIAL_PORTAL,
            "Cổng Dịch vụ công tỉnh Thái Nguyên",
            SUBMISSION_TYPES,
            None,
        ),
        SenderSpec(
            "urn:vn:payment:paygov",
            "Nền tảng thanh toán trực tuyến (PayGov)",
            ("payment-completed",),
            None,
        ),
        SenderSpec(
            "urn:vn:postal:vnpost",
            "Bưu điện Việt Nam (dịch vụ bưu chính công ích)",
            ("submitted", "supplement-provided"),
            None,
        ),
        SenderSpec(
            "urn:vn:counter:thai-nguyen:tthcc",
            "Trung tâm Phục vụ hành chính công tỉnh",
            SUBMISSION_TYPES,
            departments,
        ),
    ]
    for agency in every:
        if agency.level != "province":
            result.append(
                SenderSpec(
                    f"urn:vn:counter:{agency.code}",
                    f"Bộ phận Một cửa, {agency.name}",
                    SUBMISSION_TYPES,
                    (agency.code,),
                )
            )
    return result


def render_profile(catalogue: Catalogue, seed: int) -> str:
    import json

    def q(text: str) -> str:
        return json.dumps(text, ensure_ascii=False)

    lines = [
        f"# Generated by `python -m dossier.tools.generate_catalogue --seed {seed}`: the",
        "# province's registry of agencies and senders (contract 1.1, engine.registry) and what",
        "# the workload simulator plays. Agency names are illustrative, codes synthetic;",
        "# districts end on 2025-06-30 (two-tier local government from 1 July 2025).",
        'province: "Thái Nguyên"',
        "agencies:",
    ]
    for agency in agencies():
        lines.append(f"  - {{{', '.join(_agency_fields(agency, catalogue, q))}}}")
    lines.append("# The systems that write dossier.submission, and what each may send.")
    lines.append("senders:")
    for sender in senders():
        targets = (
            q("*") if sender.agencies is None else f"[{', '.join(q(c) for c in sender.agencies)}]"
        )
        parts = [
            f"source: {q(sender.source)}",
            f"name: {q(sender.name)}",
            f"types: [{', '.join(sender.types)}]",
            f"agencies: {targets}",
        ]
        lines.append(f"  - {{{', '.join(parts)}}}")
    lines.append("# Dossiers per month, province-wide, by procedure code (the simulator's mix).")
    lines.append("monthly_dossiers:")
    for code, count in sorted(catalogue.monthly.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {q(code)}: {count}")
    return "\n".join(lines) + "\n"


def _agency_fields(agency: Agency, catalogue: Catalogue | None, q: Any) -> list[str]:
    parts = [f"code: {q(agency.code)}", f"name: {q(agency.name)}", f"level: {agency.level}"]
    if agency.weight != 1.0:
        parts.append(f"weight: {agency.weight}")
    if agency.parent:
        parts.append(f"parent: {q(agency.parent)}")
    if agency.effective_to:
        parts.append(f"effective_to: {agency.effective_to.isoformat()}")
    if agency.successor:
        parts.append(f"successor: {q(agency.successor)}")
    if agency.successor_by_level:
        by_level = ", ".join(f"{k}: {q(v)}" for k, v in sorted(agency.successor_by_level.items()))
        parts.append(f"successor_by_level: {{{by_level}}}")
    if agency.successor_basis:
        parts.append(f"successor_basis: {q(agency.successor_basis)}")
    parts.append(f"sources: [{q(agency.source)}]")
    if agency.level == "province" and catalogue is not None:
        handled = sorted(catalogue.departments.get(agency.name, ()))
        parts.append(f"procedures: [{', '.join(q(c) for c in handled)}]")
    return parts


# --- TEST-ONLY keys of the simulated systems --------------------------------------------------

KEY_ID = "sim-test-1"
TOOLS_DIR = Path(__file__).resolve().parent
SIMULATION_REGISTRY = TOOLS_DIR / "simulation_registry.yaml"
SIMULATION_KEYS = TOOLS_DIR / "simulation_keys.yaml"
TEST_ONLY = (
    "# TEST ONLY. Derived from a public seed by dossier/tools/generate_catalogue.py: anyone can\n"
    "# compute these keys. Never register them for a real system."
)


def signing_principals() -> list[str]:
    """Who signs in the simulated province: the provincial portal (the simulator's sender), the
    busiest ward, its district and the department that decides land dossiers (and succeeds the
    districts). Not the national portal: the test fixtures send as it, unsigned."""
    return [
        PROVINCIAL_PORTAL,
        "000.20.10.H56",
        "000.00.30.H56",
        department_code(DISTRICT_SUCCESSOR_DEPARTMENT),
    ]


def simulated_private_key(principal: str, seed: int) -> bytes:
    """The raw 32-byte Ed25519 private key of a simulated system: public knowledge."""
    return hashlib.sha256(f"dossier-engine TEST-ONLY key {seed} {principal}".encode()).digest()


def _public(private: bytes) -> str:
    key = Ed25519PrivateKey.from_private_bytes(private).public_key()
    return base64.b64encode(key.public_bytes(Encoding.Raw, PublicFormat.Raw)).decode("ascii")


def render_simulation_registry(seed: int) -> str:
    """An extra registry file (DOSSIER_REGISTRY_FILES) that replaces the signing principals'
    entries with the same entries plus their test public key."""
    import json

    def q(text: str) -> str:
        return json.dumps(text, ensure_ascii=False)

    principals = signing_principals()
    lines = [
        TEST_ONLY,
        "# An extra registry file (DOSSIER_REGISTRY_FILES) for the tests and the main job: the",
        "# entries of the simulated systems that sign their inputs, with their test public keys.",
        f"# Generated by `python -m dossier.tools.generate_catalogue --seed {seed}`.",
        "agencies:",
    ]
    for agency in agencies():
        if agency.code in principals:
            key = _public(simulated_private_key(agency.code, seed))
            parts = _agency_fields(agency, None, q)
            parts.append(f"public_keys: [{{id: {q(KEY_ID)}, ed25519: {q(key)}}}]")
            lines.append(f"  - {{{', '.join(parts)}}}")
    lines.append("senders:")
    for sender in senders():
        if sender.source in principals:
            key = _public(simulated_private_key(sender.source, seed))
            targets = (
                q("*")
                if sender.agencies is None
                else f"[{', '.join(q(c) for c in sender.agencies)}]"
            )
            lines.append(
                f"  - {{source: {q(sender.source)}, name: {q(sender.name)}, "
                f"types: [{', '.join(sender.types)}], agencies: {targets}, "
                f"public_keys: [{{id: {q(KEY_ID)}, ed25519: {q(key)}}}]}}"
            )
    return "\n".join(lines) + "\n"


def render_simulation_keys(seed: int) -> str:
    """The simulator's private keys (dossier.tools.simulation signs with them)."""
    import json

    lines = [
        TEST_ONLY,
        "# The simulator's private keys: principal (agency code or sender source) -> key id and",
        "# the base64 raw 32-byte Ed25519 private key. Public halves: simulation_registry.yaml.",
        f"# Generated by `python -m dossier.tools.generate_catalogue --seed {seed}`.",
        "keys:",
    ]
    for principal in signing_principals():
        private = base64.b64encode(simulated_private_key(principal, seed)).decode("ascii")
        lines.append(
            f"  {json.dumps(principal)}: {{id: {json.dumps(KEY_ID)}, "
            f"ed25519_private: {json.dumps(private)}}}"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=2022)
    parser.add_argument("--root", type=Path, default=default_workflows_dir())
    args = parser.parse_args(argv)
    root: Path = args.root
    catalogue = generate(args.seed)
    csv_path = root / "catalogue" / "thai-nguyen.csv"
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    csv_path.write_text(render_csv(catalogue.rows), encoding="utf-8")
    profile = root / "provinces" / "thai-nguyen.yaml"
    profile.parent.mkdir(parents=True, exist_ok=True)
    profile.write_text(render_profile(catalogue, args.seed), encoding="utf-8")
    SIMULATION_REGISTRY.write_text(render_simulation_registry(args.seed), encoding="utf-8")
    SIMULATION_KEYS.write_text(render_simulation_keys(args.seed), encoding="utf-8")
    result = import_catalogue(csv_path, root)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    loaded = load_catalogue(root)
    by_level: dict[str, int] = {}
    for code in loaded.codes():
        version = loaded.versions(code)[0]
        in_force = next((v for v in loaded.versions(code) if v.in_force_on(CENSUS)), version)
        level = in_force.levels[-1]
        by_level[level] = by_level.get(level, 0) + 1
    print(f"{csv_path}: {len(catalogue.rows)} rows")
    print(f"{result.output}: {len(result.procedures)} procedures, {result.version_count} versions")
    print(f"{result.plans_output}: {len(result.plans)} migration plans")
    print(f"skipped (defined elsewhere): {', '.join(sorted(result.skipped))}")
    print(f"{profile}: {len(agencies())} agencies, {len(catalogue.monthly)} procedure shares")
    print(f"catalogue on {CENSUS}: {len(loaded.codes())} procedures, by deciding level {by_level}")
    expected = dict(COUNTS)
    if by_level != expected or len(loaded.codes()) != sum(expected.values()):
        print(f"error: expected {expected}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
