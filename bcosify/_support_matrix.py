"""The support matrix measured by scripts/support_matrix.py (generated, do not edit)."""

SUPPORT_MATRIX = [
 {
  "model": "alexnet",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 6.460625172621803e-07,
  "completeness": 7.84075655246852e-06,
  "convert_s": 0.4328991370002768,
  "reason": ""
 },
 {
  "model": "convnext_base",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 1.1188828921149252e-06,
  "completeness": 1.2990370805709972e-06,
  "convert_s": 2.0677988580009696,
  "reason": ""
 },
 {
  "model": "convnext_large",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 1.2571219940582523e-06,
  "completeness": 1.5136619140321272e-06,
  "convert_s": 2.3547562650001055,
  "reason": ""
 },
 {
  "model": "convnext_small",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 9.861646503850352e-07,
  "completeness": 1.7118480855060625e-06,
  "convert_s": 5.2242643749996205,
  "reason": ""
 },
 {
  "model": "convnext_tiny",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 1.066537038241222e-06,
  "completeness": 6.9215407165756915e-06,
  "convert_s": 0.5612961320002796,
  "reason": ""
 },
 {
  "model": "densenet121",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 5.514816052709648e-07,
  "completeness": 1.0666508387657814e-07,
  "convert_s": 3.9293384199991124,
  "reason": ""
 },
 {
  "model": "densenet161",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 7.535895178989449e-07,
  "completeness": 1.0491955038105516e-07,
  "convert_s": 3.518236612000692,
  "reason": ""
 },
 {
  "model": "densenet169",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 6.829134235886158e-07,
  "completeness": 0.0,
  "convert_s": 6.034201659998871,
  "reason": ""
 },
 {
  "model": "densenet201",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 8.357069418707397e-07,
  "completeness": 1.2019420125852776e-07,
  "convert_s": 7.685700686999553,
  "reason": ""
 },
 {
  "model": "efficientnet_b0",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 7.07327615145914e-07,
  "completeness": 9.004504590848228e-07,
  "convert_s": 1.7368765840001288,
  "reason": ""
 },
 {
  "model": "efficientnet_b1",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 9.698040912553552e-07,
  "completeness": 1.1387550102881505e-06,
  "convert_s": 1.7842215420005232,
  "reason": ""
 },
 {
  "model": "efficientnet_b2",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 7.592683459733962e-07,
  "completeness": 2.2365840379734436e-07,
  "convert_s": 1.827994885001317,
  "reason": ""
 },
 {
  "model": "efficientnet_b3",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 6.75188402965432e-07,
  "completeness": 2.3327646658799495e-07,
  "convert_s": 1.5889955880011257,
  "reason": ""
 },
 {
  "model": "efficientnet_b4",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 7.020076964181499e-07,
  "completeness": 3.527144940562721e-07,
  "convert_s": 2.6131431169997086,
  "reason": ""
 },
 {
  "model": "efficientnet_b5",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 9.597915777703747e-07,
  "completeness": 9.968763379220036e-07,
  "convert_s": 3.686350346999461,
  "reason": ""
 },
 {
  "model": "efficientnet_b6",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 7.803983521625923e-07,
  "completeness": 2.606818156891677e-07,
  "convert_s": 4.122095394001008,
  "reason": ""
 },
 {
  "model": "efficientnet_b7",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 1.0907033356488682e-06,
  "completeness": 1.813650243320808e-07,
  "convert_s": 3.266668693999236,
  "reason": ""
 },
 {
  "model": "efficientnet_v2_l",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 1.0513200550121837e-06,
  "completeness": 1.2651903489313554e-06,
  "convert_s": 6.667203111999697,
  "reason": ""
 },
 {
  "model": "efficientnet_v2_m",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 7.22594961644063e-07,
  "completeness": 1.133454816226731e-06,
  "convert_s": 4.084022842000195,
  "reason": ""
 },
 {
  "model": "efficientnet_v2_s",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 7.356027822424949e-07,
  "completeness": 7.499455989545822e-08,
  "convert_s": 2.0054693719994248,
  "reason": ""
 },
 {
  "model": "googlenet",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 4.774681769958988e-07,
  "completeness": 1.4342664655941917e-07,
  "convert_s": 0.7688915359995008,
  "reason": ""
 },
 {
  "model": "inception_v3",
  "library": "torchvision",
  "status": "pass",
  "size": 80,
  "equivalence": 2.908010969804309e-07,
  "completeness": 4.016077923552075e-07,
  "convert_s": 1.8422216700000718,
  "reason": ""
 },
 {
  "model": "maxvit_t",
  "library": "torchvision",
  "status": "pass",
  "size": 224,
  "equivalence": 3.151071723550558e-07,
  "completeness": 2.035143779721693e-06,
  "convert_s": 4.221631929000068,
  "reason": ""
 },
 {
  "model": "mnasnet0_5",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 4.817636636289535e-07,
  "completeness": 1.8715103067279415e-07,
  "convert_s": 0.9163028590010072,
  "reason": ""
 },
 {
  "model": "mnasnet0_75",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 6.38344658909773e-07,
  "completeness": 1.9602498468884733e-07,
  "convert_s": 0.7645057489989995,
  "reason": ""
 },
 {
  "model": "mnasnet1_0",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 4.865163418799057e-07,
  "completeness": 5.77597518258699e-07,
  "convert_s": 0.6676838839994161,
  "reason": ""
 },
 {
  "model": "mnasnet1_3",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 4.088394121026795e-07,
  "completeness": 2.0937552847044572e-07,
  "convert_s": 1.4840902180003468,
  "reason": ""
 },
 {
  "model": "mobilenet_v2",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 5.044079216531827e-07,
  "completeness": 2.708954696117871e-07,
  "convert_s": 0.8862404430001334,
  "reason": ""
 },
 {
  "model": "mobilenet_v3_large",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 7.535232384725532e-07,
  "completeness": 4.214921318634879e-07,
  "convert_s": 0.9646265479987051,
  "reason": ""
 },
 {
  "model": "mobilenet_v3_small",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 5.620783554149966e-07,
  "completeness": 3.097356056969147e-06,
  "convert_s": 0.777988407000521,
  "reason": ""
 },
 {
  "model": "regnet_x_16gf",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 8.39941321828519e-07,
  "completeness": 4.73033082926122e-07,
  "convert_s": 1.5508094720007648,
  "reason": ""
 },
 {
  "model": "regnet_x_1_6gf",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 4.520189520462736e-07,
  "completeness": 6.831137966401002e-08,
  "convert_s": 1.3192667940002138,
  "reason": ""
 },
 {
  "model": "regnet_x_32gf",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 9.002067713481665e-07,
  "completeness": 4.0826100189406134e-07,
  "convert_s": 1.716852008999922,
  "reason": ""
 },
 {
  "model": "regnet_x_3_2gf",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 5.580155288953392e-07,
  "completeness": 4.0027882164395123e-07,
  "convert_s": 1.8036157530004857,
  "reason": ""
 },
 {
  "model": "regnet_x_400mf",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 4.024073234631942e-07,
  "completeness": 3.038473153083032e-07,
  "convert_s": 1.4613203770004475,
  "reason": ""
 },
 {
  "model": "regnet_x_800mf",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 4.5028716044726025e-07,
  "completeness": 9.489399843687352e-08,
  "convert_s": 1.150261908000175,
  "reason": ""
 },
 {
  "model": "regnet_x_8gf",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 8.882972224455443e-07,
  "completeness": 2.280917357211365e-07,
  "convert_s": 1.8469847590004065,
  "reason": ""
 },
 {
  "model": "regnet_y_128gf",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 1.1809311217803042e-06,
  "completeness": 2.8000343377243553e-07,
  "convert_s": 9.47961921299975,
  "reason": ""
 },
 {
  "model": "regnet_y_16gf",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 7.025620334388805e-07,
  "completeness": 1.1351212947374734e-07,
  "convert_s": 1.0916514420005115,
  "reason": ""
 },
 {
  "model": "regnet_y_1_6gf",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 5.251190486887936e-07,
  "completeness": 1.755001761694075e-07,
  "convert_s": 1.2541476910009806,
  "reason": ""
 },
 {
  "model": "regnet_y_32gf",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 8.899014005692152e-07,
  "completeness": 3.028708022156934e-07,
  "convert_s": 1.6949853139994957,
  "reason": ""
 },
 {
  "model": "regnet_y_3_2gf",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 6.180212608342117e-07,
  "completeness": 1.0193834043548122e-07,
  "convert_s": 1.524582341000496,
  "reason": ""
 },
 {
  "model": "regnet_y_400mf",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 3.837022291008907e-07,
  "completeness": 2.0106104159367533e-07,
  "convert_s": 1.2517338180005027,
  "reason": ""
 },
 {
  "model": "regnet_y_800mf",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 3.8833283610983926e-07,
  "completeness": 1.958434125981512e-07,
  "convert_s": 0.9693532539986336,
  "reason": ""
 },
 {
  "model": "regnet_y_8gf",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 7.707650411248324e-07,
  "completeness": 3.0679245810461e-07,
  "convert_s": 1.1491279199999553,
  "reason": ""
 },
 {
  "model": "resnet101",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 8.813648832983745e-07,
  "completeness": 4.4448830749388435e-07,
  "convert_s": 1.761670382000375,
  "reason": ""
 },
 {
  "model": "resnet152",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 9.71969825513952e-07,
  "completeness": 1.9097203107776295e-07,
  "convert_s": 2.2303544559999864,
  "reason": ""
 },
 {
  "model": "resnet18",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 6.536574232995918e-07,
  "completeness": 2.1430999197491474e-07,
  "convert_s": 0.32299941099881835,
  "reason": ""
 },
 {
  "model": "resnet34",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 6.162124464026419e-07,
  "completeness": 1.0178810327943211e-07,
  "convert_s": 0.507025294999039,
  "reason": ""
 },
 {
  "model": "resnet50",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 7.258691425704455e-07,
  "completeness": 6.058921826479491e-07,
  "convert_s": 0.7435449000004155,
  "reason": ""
 },
 {
  "model": "resnext101_32x8d",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 7.441427669618861e-07,
  "completeness": 1.9657100835956953e-07,
  "convert_s": 1.7926906480006437,
  "reason": ""
 },
 {
  "model": "resnext101_64x4d",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 7.185245749496971e-07,
  "completeness": 7.532487984462932e-07,
  "convert_s": 2.6027797419992567,
  "reason": ""
 },
 {
  "model": "resnext50_32x4d",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 6.93938829954277e-07,
  "completeness": 5.772799909209425e-07,
  "convert_s": 0.7721583090005879,
  "reason": ""
 },
 {
  "model": "shufflenet_v2_x0_5",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 6.596042680939718e-07,
  "completeness": 2.9524312594730873e-07,
  "convert_s": 1.2553284090008674,
  "reason": ""
 },
 {
  "model": "shufflenet_v2_x1_0",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 4.5302641638045316e-07,
  "completeness": 2.0219981422542332e-07,
  "convert_s": 1.6346983519997593,
  "reason": ""
 },
 {
  "model": "shufflenet_v2_x1_5",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 3.98799954837159e-07,
  "completeness": 1.9255247707405942e-07,
  "convert_s": 1.522750318999897,
  "reason": ""
 },
 {
  "model": "shufflenet_v2_x2_0",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 6.381761181728507e-07,
  "completeness": 2.086677710622098e-07,
  "convert_s": 0.8905392969991226,
  "reason": ""
 },
 {
  "model": "squeezenet1_0",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 7.159877100093581e-07,
  "completeness": 1.0676431116962704e-07,
  "convert_s": 0.18900194999878295,
  "reason": ""
 },
 {
  "model": "squeezenet1_1",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 4.118412562092999e-07,
  "completeness": 1.0444639997331251e-07,
  "convert_s": 0.1984401080007956,
  "reason": ""
 },
 {
  "model": "swin_b",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 8.13186204595695e-07,
  "completeness": 2.852719717338914e-06,
  "convert_s": 1.2443424479988607,
  "reason": ""
 },
 {
  "model": "swin_s",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 5.828262032991915e-07,
  "completeness": 8.746730486564047e-07,
  "convert_s": 0.960935294000592,
  "reason": ""
 },
 {
  "model": "swin_t",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 9.49042032516445e-07,
  "completeness": 0.0,
  "convert_s": 0.5107831989989791,
  "reason": ""
 },
 {
  "model": "swin_v2_b",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 1.663206830926356e-06,
  "completeness": 5.162810339243151e-07,
  "convert_s": 1.4175993820008443,
  "reason": ""
 },
 {
  "model": "swin_v2_s",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 2.121506668117945e-06,
  "completeness": 1.71639641166621e-07,
  "convert_s": 1.1872653589998663,
  "reason": ""
 },
 {
  "model": "swin_v2_t",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 2.0185191260679858e-06,
  "completeness": 1.8265697576680395e-07,
  "convert_s": 0.9391144769997481,
  "reason": ""
 },
 {
  "model": "vgg11",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 1.3437470443022903e-06,
  "completeness": 9.291808964917436e-05,
  "convert_s": 4.665687817001526,
  "reason": ""
 },
 {
  "model": "vgg11_bn",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 1.1879293424499338e-06,
  "completeness": 4.106349024368683e-06,
  "convert_s": 2.1418369470011385,
  "reason": ""
 },
 {
  "model": "vgg13",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 1.3252632697913214e-06,
  "completeness": 1.3073672562313732e-06,
  "convert_s": 2.0676939919994766,
  "reason": ""
 },
 {
  "model": "vgg13_bn",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 1.3436513199849287e-06,
  "completeness": 2.1141172510397155e-06,
  "convert_s": 2.27972947499984,
  "reason": ""
 },
 {
  "model": "vgg16",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 1.8199834812548943e-06,
  "completeness": 2.417990799585823e-06,
  "convert_s": 2.233254411999951,
  "reason": ""
 },
 {
  "model": "vgg16_bn",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 1.6892477106011938e-06,
  "completeness": 4.4132257244200446e-06,
  "convert_s": 2.34269114700146,
  "reason": ""
 },
 {
  "model": "vgg19",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 1.506245780547033e-06,
  "completeness": 3.2649238619342213e-06,
  "convert_s": 2.4749983480014635,
  "reason": ""
 },
 {
  "model": "vgg19_bn",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 1.224067318617017e-06,
  "completeness": 9.395176334692223e-07,
  "convert_s": 2.0489651759999106,
  "reason": ""
 },
 {
  "model": "vit_b_16",
  "library": "torchvision",
  "status": "pass",
  "size": 32,
  "equivalence": 1.2030520792905008e-06,
  "completeness": 9.532615877105854e-06,
  "convert_s": 0.9327517159999843,
  "reason": ""
 },
 {
  "model": "vit_b_32",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 2.2370809347194154e-06,
  "completeness": 1.13926898848149e-06,
  "convert_s": 1.035038940000959,
  "reason": ""
 },
 {
  "model": "vit_h_14",
  "library": "torchvision",
  "status": "pass",
  "size": 28,
  "equivalence": 1.3790163393423427e-06,
  "completeness": 1.8755902146949666e-06,
  "convert_s": 13.197257424000782,
  "reason": ""
 },
 {
  "model": "vit_l_16",
  "library": "torchvision",
  "status": "pass",
  "size": 32,
  "equivalence": 1.2974886658412288e-06,
  "completeness": 0.00035936752101406455,
  "convert_s": 4.901156912999795,
  "reason": "float32 rounding: the float64 completeness error is 1.8e-12"
 },
 {
  "model": "vit_l_32",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 1.8302830540051218e-06,
  "completeness": 9.293553375755437e-07,
  "convert_s": 7.355388657000731,
  "reason": ""
 },
 {
  "model": "wide_resnet101_2",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 1.0838176649485831e-06,
  "completeness": 0.0,
  "convert_s": 1.8054355870008294,
  "reason": ""
 },
 {
  "model": "wide_resnet50_2",
  "library": "torchvision",
  "status": "pass",
  "size": 64,
  "equivalence": 1.0145021178686875e-06,
  "completeness": 4.820440722141939e-07,
  "convert_s": 1.6129975420008122,
  "reason": ""
 },
 {
  "model": "timm/resnet50",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 7.258691425704455e-07,
  "completeness": 3.1974755643204844e-07,
  "convert_s": 0.1991103850014042,
  "reason": ""
 },
 {
  "model": "timm/resnetv2_50",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 9.595172514309525e-07,
  "completeness": 3.985247985838214e-06,
  "convert_s": 0.12836625999989337,
  "reason": ""
 },
 {
  "model": "timm/resnext50_32x4d",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 7.54973484617949e-07,
  "completeness": 2.3024301754048793e-07,
  "convert_s": 0.10603789700144262,
  "reason": ""
 },
 {
  "model": "timm/seresnext50_32x4d",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 1.076980993275356e-06,
  "completeness": 1.878585322856452e-07,
  "convert_s": 0.1274398210007348,
  "reason": ""
 },
 {
  "model": "timm/densenet121",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 6.772145297873067e-07,
  "completeness": 2.3407061178204458e-07,
  "convert_s": 0.19321786500040616,
  "reason": ""
 },
 {
  "model": "timm/efficientnet_b0",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 1.0462317732162774e-06,
  "completeness": 3.135826034394995e-07,
  "convert_s": 0.10198493500138284,
  "reason": ""
 },
 {
  "model": "timm/tf_efficientnet_lite0",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 1.834150793911249e-06,
  "completeness": 2.0395962962993508e-07,
  "convert_s": 0.08187234900105977,
  "reason": ""
 },
 {
  "model": "timm/mobilenetv3_large_100",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 2.9061493478366174e-06,
  "completeness": 5.3982466852176e-06,
  "convert_s": 0.11441068800013454,
  "reason": ""
 },
 {
  "model": "timm/regnety_008",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 4.667212749609462e-07,
  "completeness": 1.9749340651742386e-07,
  "convert_s": 0.10265179700036242,
  "reason": ""
 },
 {
  "model": "timm/convnext_tiny",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 6.068920015422918e-07,
  "completeness": 5.988320026517613e-07,
  "convert_s": 0.15969195599973318,
  "reason": ""
 },
 {
  "model": "timm/vit_small_patch16_224",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 1.8095258838002337e-06,
  "completeness": 2.48702633598441e-07,
  "convert_s": 0.1746408649996738,
  "reason": ""
 },
 {
  "model": "timm/vit_base_patch16_224",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 1.564508806950471e-06,
  "completeness": 1.3161029528419022e-06,
  "convert_s": 0.3370443760013586,
  "reason": ""
 },
 {
  "model": "timm/deit_small_patch16_224",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 1.8095258838002337e-06,
  "completeness": 2.48702633598441e-07,
  "convert_s": 0.16829503000008117,
  "reason": ""
 },
 {
  "model": "timm/swin_tiny_patch4_window7_224",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 8.290298296742549e-07,
  "completeness": 0.0,
  "convert_s": 0.24980021699957433,
  "reason": ""
 },
 {
  "model": "timm/vit_tiny_patch16_224",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 1.1829713457700564e-06,
  "completeness": 7.614361834384908e-07,
  "convert_s": 0.11590326000077766,
  "reason": ""
 },
 {
  "model": "timm/beit_base_patch16_224",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 8.07266303581855e-07,
  "completeness": 9.754122629601625e-07,
  "convert_s": 0.19294400699982361,
  "reason": ""
 },
 {
  "model": "timm/halonet50ts",
  "library": "timm",
  "status": "pass",
  "size": 256,
  "equivalence": 7.404586881420983e-07,
  "completeness": 0.0,
  "convert_s": 0.1706148729990673,
  "reason": ""
 },
 {
  "model": "timm/gernet_s",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 7.261180030582182e-07,
  "completeness": 1.948859136291503e-07,
  "convert_s": 0.094531069000368,
  "reason": ""
 },
 {
  "model": "timm/cait_xxs24_224",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 1.7130848561919265e-07,
  "completeness": 8.223681788877002e-07,
  "convert_s": 0.34188770500077226,
  "reason": ""
 },
 {
  "model": "timm/coat_tiny",
  "library": "timm",
  "status": "unsupported",
  "size": 64,
  "equivalence": None,
  "completeness": None,
  "convert_s": None,
  "reason": "cannot convert 52 operation(s) with no B-cos conversion rule: - serial_blocks1.0.factoratt_crpe.matmul_1 (matmul): a product of two input-dependent tensors where neither is an attention matrix (a softmax); register a rule that detaches one factor - crpe1.mul_1 (mul): a product of two input-dependent tensors that is not a gate (sigmoid/hardsigmoid/tanh/softmax scaling a tensor); register a rule tha"
 },
 {
  "model": "timm/convit_tiny",
  "library": "timm",
  "status": "unsupported",
  "size": 64,
  "equivalence": None,
  "completeness": None,
  "convert_s": None,
  "reason": "cannot convert 10 operation(s) with no B-cos conversion rule: - blocks.0.attn (timm.models.convit.GPSA): no conversion rule for this module type; register one with bcosify.register_module_rule or skip it - blocks.1.attn (timm.models.convit.GPSA): no conversion rule for this module type; register one with bcosify.register_module_rule or skip it - blocks.2.attn (timm.models.convit.GPSA): no conversi"
 },
 {
  "model": "timm/convmixer_768_32",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 3.555998659976467e-07,
  "completeness": 7.346185526557747e-08,
  "convert_s": 0.10007767600109219,
  "reason": ""
 },
 {
  "model": "timm/convnext_atto",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 7.283960599124839e-07,
  "completeness": 1.055005554917443e-06,
  "convert_s": 0.05895845399936661,
  "reason": ""
 },
 {
  "model": "timm/cpubone_nano",
  "library": "timm",
  "status": "unsupported",
  "size": 64,
  "equivalence": None,
  "completeness": None,
  "convert_s": None,
  "reason": "cannot convert 3 operation(s) with no B-cos conversion rule: - stages.2.1.total.0.0.main.1 (timm.models.cpubone.ConvAttention): no conversion rule for this module type; register one with bcosify.register_module_rule or skip it - stages.3.1.total.0.0.main.1 (timm.models.cpubone.ConvAttention): no conversion rule for this module type; register one with bcosify.register_module_rule or skip it - stage"
 },
 {
  "model": "timm/crossvit_tiny_240",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 1.154357050836552e-06,
  "completeness": 2.0886223239813262e-07,
  "convert_s": 0.2543285020001349,
  "reason": ""
 },
 {
  "model": "timm/csatv2",
  "library": "timm",
  "status": "unsupported",
  "size": 64,
  "equivalence": None,
  "completeness": None,
  "convert_s": None,
  "reason": "cannot convert 70 operation(s) with no B-cos conversion rule: - stages.0.0.grn.norm (method .norm()): no conversion rule; register one with bcosify.register_function_rule - stages.0.0.grn.Truediv_1 (div): division by an input-dependent tensor - stages.0.0.grn.addcmul (function addcmul): no conversion rule; register one with bcosify.register_function_rule - stages.0.0.attn.amax (method .amax()): no"
 },
 {
  "model": "timm/cs3darknet_s",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 6.235069918147929e-07,
  "completeness": 2.1572989794549358e-07,
  "convert_s": 0.059256758000628906,
  "reason": ""
 },
 {
  "model": "timm/cspnext_tiny",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 2.4290773126267595e-07,
  "completeness": 3.21951773685214e-07,
  "convert_s": 0.06534595099947182,
  "reason": ""
 },
 {
  "model": "timm/davit_tiny",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 6.32755131846352e-07,
  "completeness": 2.5654444471001625e-06,
  "convert_s": 0.16645454999888898,
  "reason": ""
 },
 {
  "model": "timm/deepseek_vit_412m",
  "library": "timm",
  "status": "pass",
  "size": 224,
  "equivalence": 5.291703359944222e-07,
  "completeness": 1.6443210597572033e-06,
  "convert_s": 0.7829672370007756,
  "reason": ""
 },
 {
  "model": "timm/deit_tiny_patch16_224",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 1.1829713457700564e-06,
  "completeness": 7.614361834384908e-07,
  "convert_s": 0.13475492900033714,
  "reason": ""
 },
 {
  "model": "timm/dla34",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 5.583357278737822e-07,
  "completeness": 3.799529167736182e-06,
  "convert_s": 0.07231243999922299,
  "reason": ""
 },
 {
  "model": "timm/dpn68",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 1.6873133290573605e-07,
  "completeness": 6.480665319941181e-07,
  "convert_s": 0.15157365199956985,
  "reason": ""
 },
 {
  "model": "timm/edgenext_small",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 9.584476856616675e-07,
  "completeness": 5.471198960549373e-07,
  "convert_s": 0.11372811299952446,
  "reason": ""
 },
 {
  "model": "timm/efficientformer_l1",
  "library": "timm",
  "status": "pass",
  "size": 224,
  "equivalence": 2.392557689745445e-07,
  "completeness": 7.539853896787463e-08,
  "convert_s": 0.1008336100003362,
  "reason": ""
 },
 {
  "model": "timm/efficientformerv2_s0",
  "library": "timm",
  "status": "unsupported",
  "size": 64,
  "equivalence": None,
  "completeness": None,
  "convert_s": None,
  "reason": "cannot convert 12 operation(s) with no B-cos conversion rule: - stages.2.blocks.4.token_mixer.matmul (matmul): a product of two input-dependent tensors where neither is an attention matrix (a softmax); register a rule that detaches one factor - stages.2.blocks.4.token_mixer.softmax (softmax): a saturating non-linearity used on its own (not as a gate that scales a tensor) - stages.2.blocks.4.token_"
 },
 {
  "model": "timm/mnasnet_small",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 9.165162850877095e-07,
  "completeness": 7.194756790340762e-07,
  "convert_s": 0.12490286499996728,
  "reason": ""
 },
 {
  "model": "timm/efficientvim_m1",
  "library": "timm",
  "status": "unsupported",
  "size": 64,
  "equivalence": None,
  "completeness": None,
  "convert_s": None,
  "reason": "cannot convert 12 operation(s) with no B-cos conversion rule: - stages.0.blocks.0.mixer.matmul (matmul): a product of two input-dependent tensors where neither is an attention matrix (a softmax); register a rule that detaches one factor - stages.0.blocks.0.mixer.matmul_1 (matmul): a product of two input-dependent tensors where neither is an attention matrix (a softmax); register a rule that detach"
 },
 {
  "model": "timm/efficientvit_b0",
  "library": "timm",
  "status": "unsupported",
  "size": 64,
  "equivalence": None,
  "completeness": None,
  "convert_s": None,
  "reason": "cannot convert 4 operation(s) with no B-cos conversion rule: - stages.2.blocks.1.context_module.main (timm.models.efficientvit_mit.LiteMLA): no conversion rule for this module type; register one with bcosify.register_module_rule or skip it - stages.2.blocks.2.context_module.main (timm.models.efficientvit_mit.LiteMLA): no conversion rule for this module type; register one with bcosify.register_modu"
 },
 {
  "model": "timm/efficientvit_m0",
  "library": "timm",
  "status": "unsupported",
  "size": 64,
  "equivalence": None,
  "completeness": None,
  "convert_s": None,
  "reason": "cannot convert 6 operation(s) with no B-cos conversion rule: - stages.0.blocks.0.mixer.m (timm.models.efficientvit_msra.LocalWindowAttention): no conversion rule for this module type; register one with bcosify.register_module_rule or skip it - stages.1.blocks.0.mixer.m (timm.models.efficientvit_msra.LocalWindowAttention): no conversion rule for this module type; register one with bcosify.register_"
 },
 {
  "model": "timm/eva02_tiny_patch14_224",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 6.13175700436841e-07,
  "completeness": 0.0,
  "convert_s": 0.25275208099992597,
  "reason": ""
 },
 {
  "model": "timm/fasternet_s",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 4.7247326051547134e-07,
  "completeness": 3.707991709234193e-05,
  "convert_s": 0.12635369400049967,
  "reason": ""
 },
 {
  "model": "timm/fastvit_s12",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 6.538462002936285e-07,
  "completeness": 8.748948516767996e-07,
  "convert_s": 0.21901739500026451,
  "reason": ""
 },
 {
  "model": "timm/focalnet_tiny_lrf",
  "library": "timm",
  "status": "unsupported",
  "size": 64,
  "equivalence": None,
  "completeness": None,
  "convert_s": None,
  "reason": "cannot convert 12 operation(s) with no B-cos conversion rule: - layers.0.blocks.0.modulation.mul_4 (mul): a product of two input-dependent tensors that is not a gate (sigmoid/hardsigmoid/tanh/softmax scaling a tensor); register a rule that detaches one factor - layers.0.blocks.1.modulation.mul_9 (mul): a product of two input-dependent tensors that is not a gate (sigmoid/hardsigmoid/tanh/softmax sc"
 },
 {
  "model": "timm/gcvit_tiny",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 1.0805587180584553e-06,
  "completeness": 9.436698178433289e-07,
  "convert_s": 0.6016474610005389,
  "reason": ""
 },
 {
  "model": "timm/gemma4_vit_167m",
  "library": "timm",
  "status": "unsupported",
  "size": 64,
  "equivalence": None,
  "completeness": None,
  "convert_s": None,
  "reason": "torch.fx cannot trace Gemma4VitClassifier: in encoder: TraceError: symbolically traced variables cannot be used as inputs to control flow This usually means data-dependent Python control flow (an `if` or loop on tensor values). Fix: BcosConfig(leaf_modules=(\"encoder\",)) and register a rule for it with bcosify.register_module_rule (or also list it in skip_modules)."
 },
 {
  "model": "timm/ghostnet_050",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 3.642058175046259e-07,
  "completeness": 9.458791282668244e-06,
  "convert_s": 0.15192004799973802,
  "reason": ""
 },
 {
  "model": "timm/hardcorenas_a",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 7.711301464041753e-07,
  "completeness": 1.8219648723061255e-07,
  "convert_s": 0.07622036599968851,
  "reason": ""
 },
 {
  "model": "timm/hgnet_tiny",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 5.752627316724102e-07,
  "completeness": 2.563787120379857e-07,
  "convert_s": 0.10794968200025323,
  "reason": ""
 },
 {
  "model": "timm/hiera_tiny_224",
  "library": "timm",
  "status": "unsupported",
  "size": 64,
  "equivalence": None,
  "completeness": None,
  "convert_s": None,
  "reason": "cannot convert 5 operation(s) with no B-cos conversion rule: - patch_embed.get_resized_mask (function get_resized_mask): no conversion rule; register one with bcosify.register_function_rule - patch_embed.mul (mul): a product of two input-dependent tensors that is not a gate (sigmoid/hardsigmoid/tanh/softmax scaling a tensor); register a rule that detaches one factor - blocks.1.amax (method .amax()"
 },
 {
  "model": "timm/sam2_hiera_tiny",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 1.059886130860832e-06,
  "completeness": 1.477128193982935e-06,
  "convert_s": 0.15400819599926763,
  "reason": ""
 },
 {
  "model": "timm/hrnet_w18_small",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 7.873631489019317e-07,
  "completeness": 8.922971517222322e-08,
  "convert_s": 0.18122594600026787,
  "reason": ""
 },
 {
  "model": "timm/iformer_s",
  "library": "timm",
  "status": "unsupported",
  "size": 64,
  "equivalence": None,
  "completeness": None,
  "convert_s": None,
  "reason": "cannot convert 10 operation(s) with no B-cos conversion rule: - stages.2.blocks.10.mixer.module.gate_act (Sigmoid): a saturating non-linearity used on its own (not as a gate that scales a tensor) - stages.2.blocks.10.mixer.module.mul (mul): a product of two input-dependent tensors that is not a gate (sigmoid/hardsigmoid/tanh/softmax scaling a tensor); register a rule that detaches one factor - sta"
 },
 {
  "model": "timm/inception_next_atto",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 5.641302323056152e-07,
  "completeness": 2.4586618110333802e-06,
  "convert_s": 0.10630941099952906,
  "reason": ""
 },
 {
  "model": "timm/inception_resnet_v2",
  "library": "timm",
  "status": "pass",
  "size": 96,
  "equivalence": 3.635086613940075e-07,
  "completeness": 3.156341563226306e-06,
  "convert_s": 0.43504782499985595,
  "reason": ""
 },
 {
  "model": "timm/inception_v3",
  "library": "timm",
  "status": "pass",
  "size": 96,
  "equivalence": 1.6586552646913333e-06,
  "completeness": 2.0380068690428743e-06,
  "convert_s": 0.17546986900015327,
  "reason": ""
 },
 {
  "model": "timm/inception_v4",
  "library": "timm",
  "status": "pass",
  "size": 96,
  "equivalence": 3.1233301456268237e-07,
  "completeness": 5.39848372227425e-07,
  "convert_s": 0.28949080699931073,
  "reason": ""
 },
 {
  "model": "timm/lcnetv2_small",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 3.466242901595251e-07,
  "completeness": 4.2452870729903225e-06,
  "convert_s": 0.1292455090006115,
  "reason": ""
 },
 {
  "model": "timm/levit_128s",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 3.092417557581939e-07,
  "completeness": 3.4384402169962414e-07,
  "convert_s": 0.1481628149995231,
  "reason": ""
 },
 {
  "model": "timm/lowformer_b0",
  "library": "timm",
  "status": "unsupported",
  "size": 64,
  "equivalence": None,
  "completeness": None,
  "convert_s": None,
  "reason": "cannot convert 7 operation(s) with no B-cos conversion rule: - stages.2.1.attn.main.1 (timm.models.lowformer.ConvAttention): no conversion rule for this module type; register one with bcosify.register_module_rule or skip it - stages.2.2.attn.main.1 (timm.models.lowformer.ConvAttention): no conversion rule for this module type; register one with bcosify.register_module_rule or skip it - stages.2.3."
 },
 {
  "model": "timm/mambaout_femto",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 1.123645120060246e-06,
  "completeness": 1.9139324649586342e-06,
  "convert_s": 0.10657453599924338,
  "reason": ""
 },
 {
  "model": "timm/maxvit_pico_rw_256",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 7.270493256328336e-07,
  "completeness": 4.947654019815673e-07,
  "convert_s": 0.3633934240006056,
  "reason": ""
 },
 {
  "model": "timm/caformer_s18",
  "library": "timm",
  "status": "unsupported",
  "size": 64,
  "equivalence": None,
  "completeness": None,
  "convert_s": None,
  "reason": "cannot convert 25 operation(s) with no B-cos conversion rule: - stages.0.blocks.0.token_mixer.act1.pow_1 (function pow): no conversion rule; register one with bcosify.register_function_rule - stages.0.blocks.0.mlp.act.pow_2 (function pow): no conversion rule; register one with bcosify.register_function_rule - stages.0.blocks.1.token_mixer.act1.pow_3 (function pow): no conversion rule; register one"
 },
 {
  "model": "timm/gmlp_s16_224",
  "library": "timm",
  "status": "unsupported",
  "size": 64,
  "equivalence": None,
  "completeness": None,
  "convert_s": None,
  "reason": "cannot convert 30 operation(s) with no B-cos conversion rule: - blocks.0.mlp_channels.gate.mul (mul): a product of two input-dependent tensors that is not a gate (sigmoid/hardsigmoid/tanh/softmax scaling a tensor); register a rule that detaches one factor - blocks.1.mlp_channels.gate.mul_1 (mul): a product of two input-dependent tensors that is not a gate (sigmoid/hardsigmoid/tanh/softmax scaling "
 },
 {
  "model": "timm/mobilenetv3_small_050",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 5.573349426413188e-07,
  "completeness": 4.984084398529376e-07,
  "convert_s": 0.11705866999909631,
  "reason": ""
 },
 {
  "model": "timm/mobilenetv5_300m",
  "library": "timm",
  "status": "unsupported",
  "size": 64,
  "equivalence": None,
  "completeness": None,
  "convert_s": None,
  "reason": "cannot convert 1 operation(s) with no B-cos conversion rule: - msfa (timm.models.mobilenetv5.MobileNetV5MultiScaleFusionAdapter): no conversion rule for this module type; register one with bcosify.register_module_rule or skip it Fix: register a rule with bcosify.register_module_rule / register_function_rule, or keep the module unconverted with BcosConfig(skip_modules=(<qualified name>, ...))."
 },
 {
  "model": "timm/mobilevit_xxs",
  "library": "timm",
  "status": "unsupported",
  "size": 64,
  "equivalence": None,
  "completeness": None,
  "convert_s": None,
  "reason": "cannot convert 3 operation(s) with no B-cos conversion rule: - stages.2.1 (timm.models.mobilevit.MobileVitBlock): no conversion rule for this module type; register one with bcosify.register_module_rule or skip it - stages.3.1 (timm.models.mobilevit.MobileVitBlock): no conversion rule for this module type; register one with bcosify.register_module_rule or skip it - stages.4.1 (timm.models.mobilevit"
 },
 {
  "model": "timm/mvitv2_tiny",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 1.0624365813782788e-06,
  "completeness": 1.35677043999749e-06,
  "convert_s": 0.19525468699976045,
  "reason": ""
 },
 {
  "model": "timm/naflexvit_base_patch16_siglip",
  "library": "timm",
  "status": "unsupported",
  "size": 64,
  "equivalence": None,
  "completeness": None,
  "convert_s": None,
  "reason": "cannot convert 1 operation(s) with no B-cos conversion rule: - embeds (timm.models.naflexvit.NaFlexEmbeds): no conversion rule for this module type; register one with bcosify.register_module_rule or skip it Fix: register a rule with bcosify.register_module_rule / register_function_rule, or keep the module unconverted with BcosConfig(skip_modules=(<qualified name>, ...))."
 },
 {
  "model": "timm/nasnetalarge",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 8.700264402250468e-07,
  "completeness": 4.4269449972489383e-07,
  "convert_s": 0.5323529329998564,
  "reason": ""
 },
 {
  "model": "timm/nest_tiny",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 4.6403312126130913e-07,
  "completeness": 1.0631432587615564e-06,
  "convert_s": 0.14906697100013844,
  "reason": ""
 },
 {
  "model": "timm/nextvit_small",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 8.082636782091868e-07,
  "completeness": 2.113381185608887e-07,
  "convert_s": 0.20407908099878114,
  "reason": ""
 },
 {
  "model": "timm/nf_seresnet26",
  "library": "timm",
  "status": "unsupported",
  "size": 64,
  "equivalence": None,
  "completeness": None,
  "convert_s": None,
  "reason": "cannot convert 8 operation(s) with no B-cos conversion rule: - stages.0.0 (timm.models.nfnet.NormFreeBlock): no conversion rule for this module type; register one with bcosify.register_module_rule or skip it - stages.0.1 (timm.models.nfnet.NormFreeBlock): no conversion rule for this module type; register one with bcosify.register_module_rule or skip it - stages.1.0 (timm.models.nfnet.NormFreeBlock"
 },
 {
  "model": "timm/pit_xs_224",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 5.703576562154922e-07,
  "completeness": 1.0237118885925156e-06,
  "convert_s": 0.11799583399988478,
  "reason": ""
 },
 {
  "model": "timm/pnasnet5large",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 9.826258065004367e-07,
  "completeness": 3.6534379432850983e-07,
  "convert_s": 0.475190573000873,
  "reason": ""
 },
 {
  "model": "timm/pvt_v2_b0",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 6.313916856015567e-07,
  "completeness": 2.1608418876439828e-07,
  "convert_s": 0.09714739399896644,
  "reason": ""
 },
 {
  "model": "timm/qwen3_vit_88m",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 6.58533792829985e-07,
  "completeness": 3.987616992162657e-07,
  "convert_s": 0.209153793999576,
  "reason": ""
 },
 {
  "model": "timm/rdnet_tiny",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 1.4239288930184557e-06,
  "completeness": 3.50850109498424e-06,
  "convert_s": 0.1501452859993151,
  "reason": ""
 },
 {
  "model": "timm/regnety_040_sgn",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 1.4637894309998956e-06,
  "completeness": 6.583518938896304e-07,
  "convert_s": 0.24446853699919302,
  "reason": ""
 },
 {
  "model": "timm/repghostnet_050",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 3.30905322698527e-07,
  "completeness": 2.508695160940988e-06,
  "convert_s": 0.22654641199915204,
  "reason": ""
 },
 {
  "model": "timm/repvit_m1",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 2.986506331126293e-07,
  "completeness": 2.2719511605373555e-07,
  "convert_s": 0.3196739119994163,
  "reason": ""
 },
 {
  "model": "timm/res2net50_14w_8s",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 1.0400044629932381e-06,
  "completeness": 1.360925352855702e-06,
  "convert_s": 0.2173942489989713,
  "reason": ""
 },
 {
  "model": "timm/resnest14d",
  "library": "timm",
  "status": "unsupported",
  "size": 64,
  "equivalence": None,
  "completeness": None,
  "convert_s": None,
  "reason": "cannot convert 8 operation(s) with no B-cos conversion rule: - layer1.0.conv2.rsoftmax.softmax (softmax): a saturating non-linearity used on its own (not as a gate that scales a tensor) - layer1.0.conv2.mul (mul): a product of two input-dependent tensors that is not a gate (sigmoid/hardsigmoid/tanh/softmax scaling a tensor); register a rule that detaches one factor - layer2.0.conv2.rsoftmax.softma"
 },
 {
  "model": "timm/resnet50s",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 8.576409413763031e-07,
  "completeness": 2.28256922696346e-07,
  "convert_s": 0.10295826200126612,
  "reason": ""
 },
 {
  "model": "timm/resnetv2_50d_evos",
  "library": "timm",
  "status": "unsupported",
  "size": 64,
  "equivalence": None,
  "completeness": None,
  "convert_s": None,
  "reason": "cannot convert 153 operation(s) with no B-cos conversion rule: - stem.norm1.var (method .var()): no conversion rule; register one with bcosify.register_function_rule - stem.norm1.sqrt (method .sqrt()): no conversion rule; register one with bcosify.register_function_rule - stem.norm1.Truediv (div): division by an input-dependent tensor - stem.norm2.var_1 (method .var()): no conversion rule; registe"
 },
 {
  "model": "timm/rexnet_100",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 7.417000915665994e-07,
  "completeness": 4.679298797327647e-07,
  "convert_s": 0.11353361399960704,
  "reason": ""
 },
 {
  "model": "timm/selecsls42",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 1.0362527973484248e-06,
  "completeness": 1.3153268128007767e-06,
  "convert_s": 0.11421032999896852,
  "reason": ""
 },
 {
  "model": "timm/legacy_senet154",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 9.457318697059236e-07,
  "completeness": 2.077082115192752e-07,
  "convert_s": 0.4658274360008363,
  "reason": ""
 },
 {
  "model": "timm/sequencer2d_s",
  "library": "timm",
  "status": "unsupported",
  "size": 64,
  "equivalence": None,
  "completeness": None,
  "convert_s": None,
  "reason": "cannot convert 36 operation(s) with no B-cos conversion rule: - stages.0.blocks.0.rnn_tokens.rnn_v (torch.nn.modules.rnn.LSTM): no conversion rule for this module type; register one with bcosify.register_module_rule or skip it - stages.0.blocks.0.rnn_tokens.rnn_h (torch.nn.modules.rnn.LSTM): no conversion rule for this module type; register one with bcosify.register_module_rule or skip it - stages"
 },
 {
  "model": "timm/shvit_s1",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 4.268954114650114e-07,
  "completeness": 1.400211203872459e-06,
  "convert_s": 0.1638157429988496,
  "reason": ""
 },
 {
  "model": "timm/skresnet18",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 5.065527943770576e-07,
  "completeness": 3.203358005521295e-07,
  "convert_s": 0.09886799500054622,
  "reason": ""
 },
 {
  "model": "timm/starnet_s1",
  "library": "timm",
  "status": "unsupported",
  "size": 64,
  "equivalence": None,
  "completeness": None,
  "convert_s": None,
  "reason": "cannot convert 15 operation(s) with no B-cos conversion rule: - stages.0.1.mul (mul): a product of two input-dependent tensors that is not a gate (sigmoid/hardsigmoid/tanh/softmax scaling a tensor); register a rule that detaches one factor - stages.0.2.mul_1 (mul): a product of two input-dependent tensors that is not a gate (sigmoid/hardsigmoid/tanh/softmax scaling a tensor); register a rule that "
 },
 {
  "model": "timm/swiftformer_xs",
  "library": "timm",
  "status": "unsupported",
  "size": 64,
  "equivalence": None,
  "completeness": None,
  "convert_s": None,
  "reason": "cannot convert 20 operation(s) with no B-cos conversion rule: - stages.0.blocks.2.attn.normalize (function normalize): no conversion rule; register one with bcosify.register_function_rule - stages.0.blocks.2.attn.normalize_1 (function normalize): no conversion rule; register one with bcosify.register_function_rule - stages.0.blocks.2.attn.normalize_2 (function normalize): no conversion rule; regis"
 },
 {
  "model": "timm/swin_s3_tiny_224",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 8.290298296742549e-07,
  "completeness": 0.0,
  "convert_s": 0.2507657290007046,
  "reason": ""
 },
 {
  "model": "timm/swinv2_tiny_window8_256",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 6.474624001384655e-07,
  "completeness": 3.926249121377623e-07,
  "convert_s": 0.26580076800019015,
  "reason": ""
 },
 {
  "model": "timm/swinv2_cr_tiny_224",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 9.6005078376038e-07,
  "completeness": 9.29601569055194e-08,
  "convert_s": 0.2609148360006657,
  "reason": ""
 },
 {
  "model": "timm/tiny_vit_5m_224",
  "library": "timm",
  "status": "unsupported",
  "size": 64,
  "equivalence": None,
  "completeness": None,
  "convert_s": None,
  "reason": "cannot convert 10 operation(s) with no B-cos conversion rule: - stages.1.blocks.0 (timm.models.tiny_vit.TinyVitBlock): no conversion rule for this module type; register one with bcosify.register_module_rule or skip it - stages.1.blocks.1 (timm.models.tiny_vit.TinyVitBlock): no conversion rule for this module type; register one with bcosify.register_module_rule or skip it - stages.2.blocks.0 (timm."
 },
 {
  "model": "timm/tnt_s_patch16_224",
  "library": "timm",
  "status": "unsupported",
  "size": 64,
  "equivalence": None,
  "completeness": None,
  "convert_s": None,
  "reason": "cannot convert 1 operation(s) with no B-cos conversion rule: - pixel_embed.unfold (torch.nn.modules.fold.Unfold): no conversion rule for this module type; register one with bcosify.register_module_rule or skip it Fix: register a rule with bcosify.register_module_rule / register_function_rule, or keep the module unconverted with BcosConfig(skip_modules=(<qualified name>, ...))."
 },
 {
  "model": "timm/tresnet_l",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 1.2572207197081298e-05,
  "completeness": 2.356497788014167e-07,
  "convert_s": 0.20832048400006897,
  "reason": ""
 },
 {
  "model": "timm/twins_svt_small",
  "library": "timm",
  "status": "unsupported",
  "size": 64,
  "equivalence": None,
  "completeness": None,
  "convert_s": None,
  "reason": "cannot convert 9 operation(s) with no B-cos conversion rule: - blocks.0.0.attn (timm.models.twins.LocallyGroupedAttn): no conversion rule for this module type; register one with bcosify.register_module_rule or skip it - blocks.1.0.attn (timm.models.twins.LocallyGroupedAttn): no conversion rule for this module type; register one with bcosify.register_module_rule or skip it - blocks.2.0.attn (timm.m"
 },
 {
  "model": "timm/vgg11",
  "library": "timm",
  "status": "unsupported",
  "size": 64,
  "equivalence": None,
  "completeness": None,
  "convert_s": None,
  "reason": "cannot convert 1 operation(s) with no B-cos conversion rule: - pre_logits (timm.models.vgg.ConvMlp): no conversion rule for this module type; register one with bcosify.register_module_rule or skip it Fix: register a rule with bcosify.register_module_rule / register_function_rule, or keep the module unconverted with BcosConfig(skip_modules=(<qualified name>, ...))."
 },
 {
  "model": "timm/visformer_tiny",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 8.26748782856157e-06,
  "completeness": 5.246700993666309e-07,
  "convert_s": 0.11591020099876914,
  "reason": ""
 },
 {
  "model": "timm/vit_tiny_r_s16_p8_224",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 6.179323008836946e-07,
  "completeness": 3.7197642086539418e-06,
  "convert_s": 0.20625993700014078,
  "reason": ""
 },
 {
  "model": "timm/vit_relpos_small_patch16_224",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 7.06866956079466e-07,
  "completeness": 1.1983999002040946e-06,
  "convert_s": 0.1924797869996837,
  "reason": ""
 },
 {
  "model": "timm/samvit_base_patch16",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 7.137096531550924e-07,
  "completeness": 5.337408310879255e-07,
  "convert_s": 0.2341391219997604,
  "reason": ""
 },
 {
  "model": "timm/vitamin_small_224",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 3.1705897640676994e-07,
  "completeness": 6.568774324478e-07,
  "convert_s": 0.28331709899975976,
  "reason": ""
 },
 {
  "model": "timm/volo_d1_224",
  "library": "timm",
  "status": "unsupported",
  "size": 64,
  "equivalence": None,
  "completeness": None,
  "convert_s": None,
  "reason": "cannot convert 5 operation(s) with no B-cos conversion rule: - network.0.0.attn.unfold (torch.nn.modules.fold.Unfold): no conversion rule for this module type; register one with bcosify.register_module_rule or skip it - network.0.1.attn.unfold (torch.nn.modules.fold.Unfold): no conversion rule for this module type; register one with bcosify.register_module_rule or skip it - network.0.2.attn.unfold"
 },
 {
  "model": "timm/ese_vovnet19b_slim",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 4.537304789664631e-07,
  "completeness": 3.5160951483703684e-07,
  "convert_s": 0.07457890399928147,
  "reason": ""
 },
 {
  "model": "timm/xception",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 5.948837156211084e-07,
  "completeness": 3.1937506150825357e-07,
  "convert_s": 0.13517370200133882,
  "reason": ""
 },
 {
  "model": "timm/xception41",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 6.125336540208082e-07,
  "completeness": 4.840229621549952e-07,
  "convert_s": 0.2040024869984336,
  "reason": ""
 },
 {
  "model": "timm/xcit_nano_12_p8_224",
  "library": "timm",
  "status": "pass",
  "size": 64,
  "equivalence": 3.522613098994043e-07,
  "completeness": 1.8612494159242488e-06,
  "convert_s": 0.2339731150004809,
  "reason": ""
 }
]
